//! The CLI spec of a builtin guest: `builtin:<program>[:key=value,...]`, numbers in
//! decimal or `0x` hex. Missing keys take the program's defaults.

use super::{BuiltinGuest, CounterParams, DirtierParams, GuestKitError};
use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "builtin:";

/// Every builtin program and the parameters its spec takes, each with what its value is:
/// the one list that help texts and errors name programs and keys from. The parser below
/// must agree with it (a test checks every entry both ways).
pub const PROGRAMS: &[(&str, &[(&str, &str)])] = &[
    ("hello", &[]),
    ("idle", &[]),
    (
        "counter",
        &[
            ("words", "N"),
            ("passes", "N"),
            ("base", "ADDR"),
            ("progress", "0|1"),
            ("blob", "0|1"),
        ],
    ),
    (
        "dirtier",
        &[("mib", "N"), ("rate", "MiB_PER_S"), ("base", "ADDR")],
    ),
];

/// Every program as a spec, for help texts: `builtin:hello, builtin:idle,
/// builtin:counter[:words=N,passes=N,base=ADDR], ...`.
pub fn usage() -> String {
    PROGRAMS
        .iter()
        .map(|(name, params)| {
            let mut spec = format!("{PREFIX}{name}");
            if !params.is_empty() {
                let keys: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                spec.push_str(&format!("[:{}]", keys.join(",")));
            }
            spec
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The programs' names: `hello, idle, counter, dirtier`.
pub fn program_names() -> String {
    let names: Vec<&str> = PROGRAMS.iter().map(|(name, _)| *name).collect();
    names.join(", ")
}

/// The keys `program` takes (`words, passes, base`), or `(none)`.
fn keys_of(program: &str) -> String {
    let keys: Vec<&str> = PROGRAMS
        .iter()
        .filter(|(name, _)| *name == program)
        .flat_map(|(_, params)| params.iter().map(|(k, _)| *k))
        .collect();
    match keys.is_empty() {
        true => "(none)".into(),
        false => keys.join(", "),
    }
}

/// Parses the CLI spec of a builtin guest; `Display` gives it back.
///
/// ```
/// use novacron_vm::guest_kit::BuiltinGuest;
/// let guest: BuiltinGuest = "builtin:counter:words=1024,passes=2".parse().unwrap();
/// assert_eq!(guest.name(), "counter");
/// assert_eq!(guest.to_string().parse::<BuiltinGuest>().unwrap(), guest);
/// assert!("builtin:nope".parse::<BuiltinGuest>().is_err());
/// ```
impl FromStr for BuiltinGuest {
    type Err = GuestKitError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let rest = spec
            .strip_prefix(PREFIX)
            .ok_or_else(|| GuestKitError::NotBuiltin {
                spec: spec.to_owned(),
            })?;
        let (name, params) = match rest.split_once(':') {
            Some((name, params)) => (name, Some(params)),
            None => (rest, None),
        };
        match name {
            "hello" => {
                parse_params("hello", params, |_, _| Ok(false))?;
                Ok(BuiltinGuest::Hello)
            }
            "idle" => {
                parse_params("idle", params, |_, _| Ok(false))?;
                Ok(BuiltinGuest::Idle)
            }
            "counter" => {
                let mut p = CounterParams::default();
                parse_params("counter", params, |key, value| {
                    let flag = match key {
                        "progress" => Some((&mut p.print_passes, "progress")),
                        "blob" => Some((&mut p.result_blob, "blob")),
                        _ => None,
                    };
                    if let Some((slot, key)) = flag {
                        *slot = match parse_number("counter", key, value)? {
                            0 => false,
                            1 => true,
                            _ => {
                                return Err(GuestKitError::BadFlag {
                                    program: "counter",
                                    key,
                                    value: value.to_owned(),
                                })
                            }
                        };
                        return Ok(true);
                    }
                    let slot = match key {
                        "words" => &mut p.words,
                        "passes" => &mut p.passes,
                        "base" => &mut p.base,
                        _ => return Ok(false),
                    };
                    *slot = parse_number("counter", key, value)?;
                    Ok(true)
                })?;
                Ok(BuiltinGuest::Counter(p))
            }
            "dirtier" => {
                let mut p = DirtierParams::default();
                parse_params("dirtier", params, |key, value| {
                    let slot = match key {
                        "mib" => &mut p.mib,
                        "rate" => &mut p.rate_mib_s,
                        "base" => &mut p.base,
                        _ => return Ok(false),
                    };
                    *slot = parse_number("dirtier", key, value)?;
                    Ok(true)
                })?;
                Ok(BuiltinGuest::Dirtier(p))
            }
            _ => Err(GuestKitError::UnknownProgram {
                name: name.to_owned(),
            }),
        }
    }
}

/// Splits `key=value,...` and hands each pair to `set`, which returns `Ok(false)` for a key
/// it does not know. Rejects malformed, unknown and repeated keys.
fn parse_params<F>(
    program: &'static str,
    params: Option<&str>,
    mut set: F,
) -> Result<(), GuestKitError>
where
    F: FnMut(&'static str, &str) -> Result<bool, GuestKitError>,
{
    let Some(params) = params else {
        return Ok(());
    };
    let mut seen: Vec<&str> = Vec::new();
    for param in params.split(',') {
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| GuestKitError::MalformedParam {
                program,
                param: param.to_owned(),
            })?;
        if seen.contains(&key) {
            return Err(GuestKitError::DuplicateKey {
                program,
                key: key.to_owned(),
            });
        }
        let unknown = || GuestKitError::UnknownKey {
            program,
            key: key.to_owned(),
            known: keys_of(program),
        };
        let static_key = static_key(key).ok_or_else(unknown)?;
        if !set(static_key, value)? {
            return Err(unknown());
        }
        seen.push(key);
    }
    Ok(())
}

/// Maps a key to its `'static` spelling (from [`PROGRAMS`]) so errors can name it.
fn static_key(key: &str) -> Option<&'static str> {
    PROGRAMS
        .iter()
        .flat_map(|(_, params)| params.iter().map(|(k, _)| *k))
        .find(|k| *k == key)
}

/// Parses a decimal or `0x`/`0X` hex `u64`.
fn parse_number(
    program: &'static str,
    key: &'static str,
    value: &str,
) -> Result<u64, GuestKitError> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse::<u64>(),
    };
    // from_str_radix accepts a leading '+'; a spec should not.
    match parsed {
        Ok(n) if !value.contains('+') => Ok(n),
        _ => Err(GuestKitError::BadNumber {
            program,
            key,
            value: value.to_owned(),
        }),
    }
}

impl fmt::Display for BuiltinGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuiltinGuest::Hello => write!(f, "{PREFIX}hello"),
            BuiltinGuest::Idle => write!(f, "{PREFIX}idle"),
            BuiltinGuest::Counter(p) => {
                write!(
                    f,
                    "{PREFIX}counter:words={},passes={},base={:#x}",
                    p.words, p.passes, p.base
                )?;
                if p.print_passes {
                    write!(f, ",progress=1")?;
                }
                if p.result_blob {
                    write!(f, ",blob=1")?;
                }
                Ok(())
            }
            BuiltinGuest::Dirtier(p) => write!(
                f,
                "{PREFIX}dirtier:mib={},rate={},base={:#x}",
                p.mib, p.rate_mib_s, p.base
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::layout;

    fn parse(spec: &str) -> Result<BuiltinGuest, GuestKitError> {
        spec.parse()
    }

    #[test]
    fn parses_defaults() {
        assert_eq!(parse("builtin:hello").unwrap(), BuiltinGuest::Hello);
        assert_eq!(parse("builtin:idle").unwrap(), BuiltinGuest::Idle);
        assert_eq!(
            parse("builtin:counter").unwrap(),
            BuiltinGuest::Counter(CounterParams::default())
        );
        assert_eq!(
            parse("builtin:dirtier").unwrap(),
            BuiltinGuest::Dirtier(DirtierParams::default())
        );
        assert_eq!(CounterParams::default().base, layout::COUNTER_DEFAULT_BASE);
        assert_eq!(
            DirtierParams::default(),
            DirtierParams {
                base: layout::DIRTIER_DEFAULT_BASE,
                mib: 128,
                rate_mib_s: 20
            }
        );
    }

    #[test]
    fn parses_parameters_in_any_order_decimal_and_hex() {
        assert_eq!(
            parse("builtin:counter:words=1024,passes=8,base=0x200000").unwrap(),
            BuiltinGuest::Counter(CounterParams {
                base: 0x20_0000,
                words: 1024,
                passes: 8,
                print_passes: false,
                result_blob: false,
            })
        );
        assert_eq!(
            parse("builtin:counter:passes=0X10").unwrap(),
            BuiltinGuest::Counter(CounterParams {
                passes: 16,
                ..CounterParams::default()
            })
        );
        assert_eq!(
            parse("builtin:dirtier:mib=128,rate=20,base=0x6000000").unwrap(),
            BuiltinGuest::Dirtier(DirtierParams {
                base: 0x600_0000,
                mib: 128,
                rate_mib_s: 20
            })
        );
        assert_eq!(
            parse("builtin:dirtier:rate=0,mib=1").unwrap(),
            BuiltinGuest::Dirtier(DirtierParams {
                mib: 1,
                rate_mib_s: 0,
                ..DirtierParams::default()
            })
        );
    }

    #[test]
    fn display_round_trips() {
        let guests = [
            BuiltinGuest::Hello,
            BuiltinGuest::Idle,
            BuiltinGuest::Counter(CounterParams::default()),
            BuiltinGuest::Counter(CounterParams {
                base: u64::MAX,
                words: 0,
                passes: u64::MAX,
                print_passes: true,
                result_blob: true,
            }),
            BuiltinGuest::Dirtier(DirtierParams::default()),
            BuiltinGuest::Dirtier(DirtierParams {
                base: 0x1234_5000,
                mib: 7,
                rate_mib_s: 0,
            }),
        ];
        for guest in guests {
            let spec = guest.to_string();
            assert!(spec.starts_with(&format!("builtin:{}", guest.name())));
            assert_eq!(parse(&spec).unwrap(), guest, "spec {spec}");
        }
    }

    #[test]
    fn progress_is_a_flag_and_round_trips() {
        let on = parse("builtin:counter:passes=3,progress=1").unwrap();
        assert!(matches!(on, BuiltinGuest::Counter(p) if p.print_passes && p.passes == 3));
        assert_eq!(on.to_string().parse::<BuiltinGuest>().unwrap(), on);
        let off = parse("builtin:counter:progress=0").unwrap();
        assert_eq!(off, BuiltinGuest::Counter(CounterParams::default()));
        assert!(!off.to_string().contains("progress"));
        let err = parse("builtin:counter:progress=2").unwrap_err().to_string();
        assert!(err.contains("progress") && err.contains("0 or 1"), "{err}");
        let blob = parse("builtin:counter:blob=1").unwrap();
        assert!(matches!(blob, BuiltinGuest::Counter(p) if p.result_blob && !p.print_passes));
        assert_eq!(blob.to_string().parse::<BuiltinGuest>().unwrap(), blob);
        let err = parse("builtin:counter:blob=7").unwrap_err().to_string();
        assert!(err.contains("blob") && err.contains("0 or 1"), "{err}");
    }

    #[test]
    fn the_list_of_programs_is_what_the_parser_takes_and_the_errors_name() {
        // Every listed program parses with each of its keys, and no other key.
        for (name, params) in PROGRAMS {
            let guest = parse(&format!("builtin:{name}")).unwrap();
            assert_eq!(guest.name(), *name);
            for (key, _) in *params {
                parse(&format!("builtin:{name}:{key}=1")).unwrap();
            }
            let err = parse(&format!("builtin:{name}:nokey=1"))
                .unwrap_err()
                .to_string();
            for (key, _) in *params {
                assert!(err.contains(key), "{err}");
            }
        }
        // Every program the parser knows is listed (each variant's name).
        for guest in [
            BuiltinGuest::Hello,
            BuiltinGuest::Idle,
            BuiltinGuest::Counter(CounterParams::default()),
            BuiltinGuest::Dirtier(DirtierParams::default()),
        ] {
            assert!(
                PROGRAMS.iter().any(|(name, _)| *name == guest.name()),
                "{} is missing from PROGRAMS",
                guest.name()
            );
        }
        let err = parse("builtin:fizz").unwrap_err().to_string();
        assert!(
            err.contains("known: hello, idle, counter, dirtier"),
            "{err}"
        );
        assert_eq!(
            usage(),
            "builtin:hello, builtin:idle, builtin:counter[:words=N,passes=N,base=ADDR,progress=0|1,blob=0|1], \
             builtin:dirtier[:mib=N,rate=MiB_PER_S,base=ADDR]"
        );
    }

    #[test]
    fn rejects_non_builtin_and_unknown_program() {
        assert!(matches!(
            parse("counter"),
            Err(GuestKitError::NotBuiltin { spec }) if spec == "counter"
        ));
        assert!(matches!(parse(""), Err(GuestKitError::NotBuiltin { .. })));
        assert!(matches!(
            parse("builtin:fizz:a=1"),
            Err(GuestKitError::UnknownProgram { name }) if name == "fizz"
        ));
        assert!(matches!(
            parse("builtin:"),
            Err(GuestKitError::UnknownProgram { name }) if name.is_empty()
        ));
        assert!(matches!(
            parse("builtin:Hello"),
            Err(GuestKitError::UnknownProgram { .. })
        ));
    }

    #[test]
    fn rejects_unknown_malformed_and_duplicate_keys() {
        assert!(matches!(
            parse("builtin:counter:mib=3"),
            Err(GuestKitError::UnknownKey { program: "counter", key, .. }) if key == "mib"
        ));
        assert!(matches!(
            parse("builtin:dirtier:words=3"),
            Err(GuestKitError::UnknownKey { program: "dirtier", key, .. }) if key == "words"
        ));
        assert!(matches!(
            parse("builtin:hello:base=0"),
            Err(GuestKitError::UnknownKey { program: "hello", key, .. }) if key == "base"
        ));
        assert!(matches!(
            parse("builtin:counter:speed=9"),
            Err(GuestKitError::UnknownKey { key, .. }) if key == "speed"
        ));
        assert!(matches!(
            parse("builtin:counter:words"),
            Err(GuestKitError::MalformedParam { param, .. }) if param == "words"
        ));
        assert!(matches!(
            parse("builtin:counter:"),
            Err(GuestKitError::MalformedParam { param, .. }) if param.is_empty()
        ));
        assert!(matches!(
            parse("builtin:counter:words=1,"),
            Err(GuestKitError::MalformedParam { .. })
        ));
        assert!(matches!(
            parse("builtin:dirtier:mib=1,mib=2"),
            Err(GuestKitError::DuplicateKey { program: "dirtier", key }) if key == "mib"
        ));
    }

    #[test]
    fn rejects_bad_numbers() {
        for bad in [
            "",
            "x",
            "0x",
            "-1",
            "+1",
            "0x+1",
            "1.5",
            "1e3",
            " 1",
            "0b11",
            "18446744073709551616",
            "0x10000000000000000",
        ] {
            let spec = format!("builtin:counter:words={bad}");
            match parse(&spec) {
                Err(GuestKitError::BadNumber {
                    program: "counter",
                    key: "words",
                    value,
                }) => assert_eq!(value, bad),
                other => panic!("{spec}: expected BadNumber, got {other:?}"),
            }
        }
        assert!(matches!(
            parse("builtin:dirtier:rate=fast"),
            Err(GuestKitError::BadNumber {
                program: "dirtier",
                key: "rate",
                ..
            })
        ));
        assert_eq!(
            parse("builtin:counter:words=18446744073709551615").unwrap(),
            BuiltinGuest::Counter(CounterParams {
                words: u64::MAX,
                ..CounterParams::default()
            })
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = parse("builtin:dirtier:rate=fast").unwrap_err().to_string();
        assert!(
            err.contains("dirtier") && err.contains("rate") && err.contains("fast"),
            "{err}"
        );
        let err = parse("builtin:counter:speed=1").unwrap_err().to_string();
        assert!(
            err.contains("speed") && err.contains("words, passes, base"),
            "{err}"
        );
    }
}
