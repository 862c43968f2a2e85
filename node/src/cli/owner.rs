//! `novacron owner active|idle|auto`: tells the local node what its owner is doing
//! (`POST /api/v1/politeness/owner`). The word beats the hook files and the input devices
//! and is kept across restarts of the node until `auto` clears it.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::api_args::{block_on, ApiArgs};
use crate::api::types::{OwnerRequest, OwnerSetting, PolitenessInfo};

#[derive(Args, Debug)]
pub struct OwnerArgs {
    /// active: "I'm using the machine"; idle: "I'm away"; auto: let the node judge again.
    #[arg(value_enum)]
    owner: OwnerArg,
    /// Print the politeness state as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OwnerArg {
    Active,
    Idle,
    Auto,
}

pub fn run(args: OwnerArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    let owner = match args.owner {
        OwnerArg::Active => OwnerSetting::Active,
        OwnerArg::Idle => OwnerSetting::Idle,
        OwnerArg::Auto => OwnerSetting::Auto,
    };
    let info: PolitenessInfo = block_on(async move {
        Ok(client
            .post("/api/v1/politeness/owner", &OwnerRequest { owner })
            .await?)
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        print!("{}", render(&info));
    }
    Ok(ExitCode::SUCCESS)
}

/// What the node now says, for people.
fn render(info: &PolitenessInfo) -> String {
    let owner = match info.owner_override {
        OwnerSetting::Auto => "auto: the node judges the owner by its hook files and devices \
                               again"
            .to_string(),
        set => format!(
            "{} (kept across restarts; `novacron owner auto` clears it)",
            set.as_str()
        ),
    };
    let mut politeness = info.state.clone();
    if !info.reasons.is_empty() {
        politeness.push_str(&format!(" ({})", info.reasons.join("; ")));
    }
    format!("owner       {owner}\npoliteness  {politeness}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_says_what_is_set_and_what_it_does() {
        let mut info = crate::cli::status::tests::politeness();
        info.owner_override = OwnerSetting::Active;
        info.state = "evacuate".into();
        info.reasons = vec!["the owner is using the machine".into()];
        let text = render(&info);
        assert!(
            text.contains("owner       active (kept across restarts"),
            "{text}"
        );
        assert!(
            text.contains("politeness  evacuate (the owner is using the machine)"),
            "{text}"
        );
        info.owner_override = OwnerSetting::Auto;
        assert!(render(&info).contains("owner       auto: "));
    }
}
