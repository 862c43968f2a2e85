//! Live migration over the mesh: two in-process mesh nodes on loopback, each with
//! `/novacron/migrate/1` ([`mesh_migration`]), and real jailed VMM processes (the
//! `novacron` binary) on both sides whose migration streams are Unix sockets bridged to
//! libp2p streams. A counter guest moved mid-run finishes on the destination with its
//! result; a refused offer is a clear error; garbage and oversized offers are refused
//! without harm; cutting the bridges mid-transfer rolls the source back and the guest
//! finishes there; a migration whose destination's confirm is lost goes in doubt, and the
//! source asks the destination over a new stream and finishes the move; a source daemon
//! asks the destination itself (without a VMM) and hears what its record says.
//!
//! The KVM tests skip with a message when /dev/kvm is unusable.

#[allow(dead_code)]
#[path = "common/confirm_cutter.rs"]
mod confirm_cutter;
#[allow(dead_code)]
#[path = "common/guest.rs"]
mod guest;

use guest::{counter, kvm_usable};
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::swarm::{MeshNode, Multiaddr, PeerId, SwarmConfig};
use novacron_node::mesh_migration::{
    Answer, IncomingMigration, MeshMigrationError, MeshMigrations, MigrationOffer, MIGRATE_PROTOCOL,
};
use novacron_vm::migration::links::{new_session, Preamble};
use novacron_vm::process::control::{
    AdoptedState, Command, Event, Launch, LaunchSource, MigrateOut, MigrationMode as VmMode,
    SandboxSettings,
};
use novacron_vm::process::launcher::{new_vm_id, LaunchError, VmmProcess};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(25);
const MEM: u64 = 256 << 20;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn loopback(bootstrap: Vec<Multiaddr>) -> SwarmConfig {
    SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")],
        bootstrap,
        force_kad_server: true,
        ..SwarmConfig::default()
    }
}

/// Two connected nodes: the source `a` and the destination `b`, whose `admit` refuses VMs
/// named `refuse-me`.
struct Pair {
    a: MeshNode,
    b: MeshNode,
    mig_a: MeshMigrations,
    _mig_b: MeshMigrations,
    incoming_b: Receiver<IncomingMigration>,
    /// What b answers a source in doubt (None: not known).
    b_started: Arc<Mutex<Option<bool>>>,
}

async fn pair() -> Pair {
    let a = MeshNode::start(&NodeIdentity::generate().unwrap(), loopback(vec![])).unwrap();
    let addr = loop {
        if let Some(addr) = a.listen_addrs().await.unwrap().into_iter().next() {
            break addr;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let boot: Multiaddr = format!("{addr}/p2p/{}", a.peer_id()).parse().unwrap();
    let b = MeshNode::start(&NodeIdentity::generate().unwrap(), loopback(vec![boot])).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !a.connected_peers().await.unwrap().contains(&b.peer_id()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never connected to a"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mig_a, _) = MeshMigrations::start(&a, |_, _| Ok(()), |_, _| None).unwrap();
    let b_started = Arc::new(Mutex::new(None));
    let answer = b_started.clone();
    let (mig_b, incoming_b) = MeshMigrations::start(
        &b,
        |_, offer: &MigrationOffer| {
            if offer.vm_id == "refuse-me" {
                return Err("this node is busy with its owner".into());
            }
            Ok(())
        },
        move |_, _| *answer.lock().unwrap(),
    )
    .unwrap();
    Pair {
        a,
        b,
        mig_a,
        _mig_b: mig_b,
        incoming_b,
        b_started,
    }
}

fn offer(vm_id: &str) -> MigrationOffer {
    MigrationOffer {
        session: new_session(),
        vm_id: vm_id.into(),
        spec: serde_json::from_str(&format!(
            r#"{{"guest":"builtin:counter","mem_mib":{}}}"#,
            MEM >> 20
        ))
        .unwrap(),
        mode: novacron_node::model::MigrationMode::Live,
        mem_bytes: MEM,
        vcpus: 1,
    }
}

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_novacron"))
}

fn console(dir: &Path, name: &str) -> (std::path::PathBuf, Stdio) {
    let path = dir.join(name);
    let file = File::create(&path).unwrap();
    (path, Stdio::from(file))
}

fn results(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("result="))
        .map(str::to_string)
        .collect()
}

/// A source VMM running `spec`, once its guest reported progress; adoptable on `adopt`
/// when given.
fn source_vmm(
    spec: &str,
    fill: Option<(u64, u64)>,
    adopt: Option<std::path::PathBuf>,
    stdout: Stdio,
) -> (VmmProcess, String) {
    let vm_id = new_vm_id();
    let launch = Launch {
        vm_id: vm_id.clone(),
        source: LaunchSource::Builtin { spec: spec.into() },
        mem_bytes: MEM,
        vcpus: 1,
        fill_pattern: fill,
        start_paused: false,
        sandbox: SandboxSettings::default(),
        adopt,
        result_blob: None,
    };
    let mut vmm = VmmProcess::spawn(exe(), &launch, stdout).unwrap();
    vmm.wait_ready(WAIT).unwrap();
    vmm.wait_for(WAIT, |e| matches!(e, Event::Guest { .. }).then_some(()))
        .unwrap();
    (vmm, vm_id)
}

/// Waits until the VMM ends: its `Exited` event, or its death. (At this tree's base a VMM is
/// killed by SIGSYS, fcntl on its vCPU thread, as its guest exits, after the guest printed
/// its result: the checks are on the console, which shows where the guest finished.)
/// Panics if `forbidden` is seen first.
fn wait_end(vmm: &mut VmmProcess, forbidden: impl Fn(&Event) -> bool) -> String {
    let end = vmm.wait_for(WAIT, |e| {
        assert!(!forbidden(e), "unexpected event {e:?}");
        match e {
            Event::Exited(r) => Some(format!("{r:?}")),
            _ => None,
        }
    });
    let _ = vmm.wait();
    match end {
        Ok(r) => r,
        Err(LaunchError::Died(how)) => how,
        Err(e) => panic!("the VMM did not end: {e}"),
    }
}

fn migrate_out(session: [u8; 16]) -> Command {
    Command::MigrateOut(MigrateOut::new(session, VmMode::Live))
}

/// Launches the destination VMM for an incoming migration.
fn destination_vmm(incoming: &IncomingMigration, stdout: Stdio) -> VmmProcess {
    destination_vmm_on(&incoming.offer, &incoming.streams, stdout)
}

fn destination_vmm_on(offer: &MigrationOffer, streams: &[UnixStream], stdout: Stdio) -> VmmProcess {
    let launch = Launch {
        vm_id: new_vm_id(),
        source: LaunchSource::Incoming {
            session: offer.session,
            store: None,
            verify_memory: false,
        },
        mem_bytes: offer.mem_bytes,
        vcpus: offer.vcpus,
        fill_pattern: None,
        start_paused: false,
        sandbox: SandboxSettings::default(),
        adopt: None,
        result_blob: None,
    };
    VmmProcess::spawn_with_streams(exe(), &launch, stdout, streams).unwrap()
}

/// The guest's result is on the destination's console, once, and not on the source's.
fn assert_finished_once_at_the_destination(o: &Outgoing, end: &str) {
    assert_eq!(
        results(&o.dst_console),
        vec![o.expected.clone()],
        "destination ended: {end}"
    );
    assert!(
        results(&o.src_console).is_empty(),
        "the guest ran at the source too"
    );
}

/// Waits for a bridge counter condition: a bridge counts bytes once the other side's
/// socket took them, which can be after the VMM there already acted on them.
fn wait_counted(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn recv_incoming(rt: &Runtime, rx: &mut Receiver<IncomingMigration>) -> IncomingMigration {
    rt.block_on(tokio::time::timeout(WAIT, rx.recv()))
        .expect("no incoming migration in time")
        .expect("the incoming queue closed")
}

/// A counter guest of `passes` running on a source VMM (with `fill` of data when given),
/// whose migration to b was offered, opened and handed to that VMM.
struct Outgoing {
    tmp: tempfile::TempDir,
    expected: String,
    src: VmmProcess,
    src_console: std::path::PathBuf,
    dst_console: std::path::PathBuf,
    /// The destination VMM's stdout (its console), until taken.
    dst_out: Option<Stdio>,
    offer: MigrationOffer,
    opened: novacron_node::mesh_migration::OpenedMigration,
}

/// The source VMM is adoptable when `adoptable`, on `tmp/source.sock`.
fn start_outgoing(
    rt: &Runtime,
    p: &Pair,
    passes: u64,
    fill: Option<(u64, u64)>,
    adoptable: bool,
) -> Outgoing {
    let tmp = tempfile::tempdir().unwrap();
    let (spec, expected) = counter(passes);
    let (src_console, src_out) = console(tmp.path(), "source.txt");
    let (dst_console, dst_out) = console(tmp.path(), "destination.txt");
    let adopt = adoptable.then(|| tmp.path().join("source.sock"));
    let (mut src, vm_id) = source_vmm(&spec, fill, adopt, src_out);
    let offer = offer(&vm_id);
    let opened = rt
        .block_on(p.mig_a.open(p.b.peer_id(), offer.clone(), 2))
        .unwrap();
    assert_eq!((opened.session, opened.streams.len()), (offer.session, 3));
    src.send_with_streams(&migrate_out(offer.session), &opened.streams)
        .unwrap();
    Outgoing {
        tmp,
        expected,
        src,
        src_console,
        dst_console,
        dst_out: Some(dst_out),
        offer,
        opened,
    }
}

#[test]
fn a_counter_moves_live_over_bridged_libp2p_streams_and_keeps_its_result() {
    if !kvm_usable("live migration over the mesh") {
        return;
    }
    let rt = runtime();
    let _in_runtime = rt.enter();
    let mut p = rt.block_on(pair());
    let mut o = start_outgoing(&rt, &p, 3, None, false);
    let incoming = recv_incoming(&rt, &mut p.incoming_b);
    assert_eq!(incoming.peer, p.a.peer_id());
    assert_eq!(incoming.offer, o.offer);
    let mut dst = destination_vmm(
        &incoming,
        o.dst_out.take().expect("the destination console"),
    );
    let moved = o
        .src
        .wait_for(WAIT, |e| match e {
            Event::MigratedOut(s) => Some(Ok(s.clone())),
            Event::MigrationFailed { reason, .. } => Some(Err(reason.clone())),
            _ => None,
        })
        .unwrap();
    let summary = moved.unwrap_or_else(|reason| panic!("the migration failed: {reason}"));
    dst.wait_for(WAIT, |e| {
        matches!(e, Event::MigratedIn { .. }).then_some(())
    })
    .unwrap();
    let end = wait_end(&mut dst, |_| false);
    let _ = o.src.wait();
    assert_finished_once_at_the_destination(&o, &end);
    // Everything the VMMs said went through the bridges.
    let bridged = &o.opened.bridges;
    wait_counted("every byte to be counted on both sides", || {
        bridged.bytes_from_peer() > 0
            && incoming.bridges.bytes_from_peer() == bridged.bytes_to_peer()
    });
    assert!(bridged.bytes_to_peer() >= summary.progress.wire_bytes);
}

/// A migration whose destination started the VM but whose confirm never reached the
/// source (the destination's streams are cut after it): returns once the source VMM
/// reported the migration in doubt, with the destination VMM. The guest runs 6 passes, long
/// enough to outlast the migration, the cut and what a test does next on a loaded machine.
fn in_doubt(rt: &Runtime, p: &mut Pair, adoptable: bool) -> (Outgoing, VmmProcess) {
    let mut o = start_outgoing(rt, p, 6, None, adoptable);
    let incoming = recv_incoming(rt, &mut p.incoming_b);
    let (cut, spliced) = confirm_cutter::splice(incoming.streams);
    let mut dst = destination_vmm_on(
        &incoming.offer,
        &spliced,
        o.dst_out.take().expect("the destination console"),
    );
    drop(spliced);
    dst.wait_for(WAIT, |e| {
        matches!(e, Event::MigratedIn { .. }).then_some(())
    })
    .unwrap();
    *p.b_started.lock().unwrap() = Some(true);
    o.src
        .wait_for(WAIT, |e| match e {
            Event::MigrationInDoubt => Some(()),
            Event::MigratedOut(_) | Event::MigrationFailed { .. } => {
                panic!("the migration ended without doubt: {e:?}")
            }
            _ => None,
        })
        .unwrap();
    assert!(cut.cut(), "in doubt before the cut");
    (o, dst)
}

#[test]
fn a_lost_confirm_is_resolved_over_a_new_stream_and_the_guest_finishes_once() {
    if !kvm_usable("in-doubt resolution over the mesh") {
        return;
    }
    let rt = runtime();
    let _in_runtime = rt.enter();
    let mut p = rt.block_on(pair());
    let (mut o, mut dst) = in_doubt(&rt, &mut p, false);
    let session = o.offer.session;
    let resolution = rt
        .block_on(p.mig_a.resolve(p.b.peer_id(), session))
        .unwrap();
    o.src
        .send_with_streams(
            &Command::MigrationReconnect { session },
            &resolution.streams,
        )
        .unwrap();
    o.src
        .wait_for(WAIT, |e| match e {
            Event::MigratedOut(_) => Some(()),
            Event::MigrationFailed { reason, .. } => panic!("resolved as failed: {reason}"),
            _ => None,
        })
        .unwrap();
    wait_counted("the answer to come over the mesh", || {
        resolution.bridges.bytes_from_peer() > 0
    });
    let end = wait_end(&mut dst, |_| false);
    let _ = o.src.wait();
    assert_finished_once_at_the_destination(&o, &end);
}

#[test]
fn a_source_in_doubt_whose_owner_is_gone_stays_paused_and_is_adopted_at_once() {
    if !kvm_usable("in doubt without an owner") {
        return;
    }
    let rt = runtime();
    let _in_runtime = rt.enter();
    let mut p = rt.block_on(pair());
    let (mut o, mut dst) = in_doubt(&rt, &mut p, true);
    // The source's daemon dies: nobody will hand the VMM new streams. It must not wait out
    // its in-doubt minute, deaf to adoption, for a reconnection that cannot come.
    let socket = o.tmp.path().join("source.sock");
    let pid = o.src.abandon();
    let (src, adopted) = VmmProcess::adopt(
        &socket,
        pid,
        Some(novacron_vm::process::launcher::cgroup_name(&o.offer.vm_id)),
    )
    .expect("the VMM in doubt answers its new owner");
    assert_eq!(adopted.state, AdoptedState::Paused, "{adopted:?}");
    o.src = src;
    // The destination, which started the VM, finishes the guest; the paused source does not.
    let end = wait_end(&mut dst, |_| false);
    o.src.send(&Command::Stop).unwrap();
    let _ = wait_end(&mut o.src, |_| false);
    assert_finished_once_at_the_destination(&o, &end);
}

#[test]
fn cutting_the_bridges_mid_transfer_rolls_back_and_the_guest_finishes_on_the_source() {
    if !kvm_usable("a cut mesh migration") {
        return;
    }
    let rt = runtime();
    let _in_runtime = rt.enter();
    let mut p = rt.block_on(pair());
    // 64 MiB of data to move, so the cut lands while chunks flow.
    let mut o = start_outgoing(&rt, &p, 3, Some((16 << 20, 64 << 20)), false);
    let incoming = recv_incoming(&rt, &mut p.incoming_b);
    let mut dst = destination_vmm(
        &incoming,
        o.dst_out.take().expect("the destination console"),
    );
    o.src
        .wait_for(WAIT, |e| match e {
            Event::MigrationProgress(pr) if pr.bytes_sent > 0 => Some(()),
            Event::MigratedOut(_) => panic!("migrated before the cut"),
            _ => None,
        })
        .unwrap();
    o.opened.bridges.abort();
    let reason = o
        .src
        .wait_for(WAIT, |e| match e {
            Event::MigrationFailed { reason, .. } => Some(reason.clone()),
            Event::MigratedOut(_) => panic!("migrated although the links were cut"),
            _ => None,
        })
        .unwrap();
    assert!(!reason.is_empty());
    // The destination VMM gives up; nothing runs there.
    let dst_end = wait_end(&mut dst, |e| matches!(e, Event::MigratedIn { .. }));
    assert!(results(&o.dst_console).is_empty(), "{dst_end}");
    // The source still runs the guest, which finishes with its result.
    let end = wait_end(&mut o.src, |e| matches!(e, Event::MigratedOut(_)));
    assert_eq!(
        results(&o.src_console),
        vec![o.expected],
        "source ended: {end}"
    );
}

/// Reads one answer frame from a raw stream.
async fn answer_of(s: &mut novacron_mesh::swarm::Stream) -> Answer {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    Answer::decode(&body).unwrap()
}

async fn raw_answer(node: &MeshNode, to: PeerId, bytes: &[u8]) -> Answer {
    let mut control = node.stream_control();
    let mut s = control.open_stream(to, MIGRATE_PROTOCOL).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::timeout(WAIT, answer_of(&mut s)).await.unwrap()
}

fn refusal(a: Answer) -> String {
    match a {
        Answer::Refuse { reason } => reason,
        Answer::Accept => panic!("accepted"),
    }
}

#[test]
fn a_data_stream_that_overtakes_its_control_stream_still_joins() {
    let rt = runtime();
    rt.block_on(async {
        let mut p = pair().await;
        let b = p.b.peer_id();
        let good = offer("early");
        let session = good.session;
        let preamble = |index| {
            Preamble {
                session,
                index,
                count: 2,
            }
            .encode()
        };
        let mut control = p.a.stream_control();
        // Data stream 1 first: its session is not registered yet when it arrives.
        let mut data = control.open_stream(b, MIGRATE_PROTOCOL).await.unwrap();
        data.write_all(&preamble(1)).await.unwrap();
        data.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut ctl = control.open_stream(b, MIGRATE_PROTOCOL).await.unwrap();
        ctl.write_all(&good.encode().unwrap()).await.unwrap();
        ctl.flush().await.unwrap();
        let answer = tokio::time::timeout(WAIT, answer_of(&mut ctl))
            .await
            .unwrap();
        assert_eq!(answer, Answer::Accept);
        ctl.write_all(&preamble(0)).await.unwrap();
        ctl.flush().await.unwrap();
        let mut joined = [9u8; 1];
        tokio::time::timeout(WAIT, data.read_exact(&mut joined))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(joined, [1], "the early data stream was not joined");
        let incoming = tokio::time::timeout(WAIT, p.incoming_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((incoming.offer, incoming.streams.len()), (good, 2));
    });
}

#[test]
fn refused_garbage_and_oversized_offers_are_clear_errors_and_harmless() {
    let rt = runtime();
    rt.block_on(async {
        let p = pair().await;
        let b = p.b.peer_id();
        // A refusal by the destination's policy names the peer and its reason.
        let err = p.mig_a.open(b, offer("refuse-me"), 2).await.unwrap_err();
        assert!(matches!(err, MeshMigrationError::Refused { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&b.to_string()) && text.contains("busy with its owner"),
            "{text}"
        );
        // Bad arguments never reach the wire.
        let err = p.mig_a.open(b, offer("a/b"), 2).await.unwrap_err();
        assert!(err.to_string().contains("vm_id \"a/b\""), "{err}");
        let err = p.mig_a.open(b, offer("ok"), 0).await.unwrap_err();
        assert!(err.to_string().contains("give 1 to 8"), "{err}");

        // Oversized: refused from the length prefix.
        let huge = (10u32 << 20).to_le_bytes();
        let reason = refusal(raw_answer(&p.a, b, &huge).await);
        assert!(reason.contains("over the limit"), "{reason}");
        // Garbage JSON of a valid length.
        let mut garbage = 9u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(b"{not json");
        let reason = refusal(raw_answer(&p.a, b, &garbage).await);
        assert!(reason.contains("invalid offer"), "{reason}");
        // Valid JSON, invalid figures.
        let mut bad = offer("ok");
        bad.vcpus = 0;
        let body = serde_json::to_vec(&bad).unwrap();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        let reason = refusal(raw_answer(&p.a, b, &frame).await);
        assert!(reason.contains("vcpus 0"), "{reason}");
        // A data stream for a session nobody offered is not joined.
        let mut control = p.a.stream_control();
        let mut s = control.open_stream(b, MIGRATE_PROTOCOL).await.unwrap();
        let pre = Preamble {
            session: [9; 16],
            index: 1,
            count: 2,
        };
        s.write_all(&pre.encode()).await.unwrap();
        s.flush().await.unwrap();
        let mut joined = [9u8; 1];
        tokio::time::timeout(WAIT, s.read_exact(&mut joined))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(joined, [0]);

        // The destination still takes a good offer afterwards.
        let mut incoming_b = p.incoming_b;
        let good = offer("good");
        let opened = p.mig_a.open(b, good.clone(), 1).await.unwrap();
        let incoming = tokio::time::timeout(WAIT, incoming_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(incoming.offer, good);
        assert_eq!((opened.streams.len(), incoming.streams.len()), (2, 2));
        // The VMM ends are joined end to end: control to control, data to data.
        let (mut src_ends, mut dst_ends) = (opened.streams, incoming.streams);
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            for (i, (s, d)) in src_ends.iter_mut().zip(dst_ends.iter_mut()).enumerate() {
                s.write_all(&[i as u8; 3]).unwrap();
                let mut got = [0u8; 3];
                d.read_exact(&mut got).unwrap();
                assert_eq!(got, [i as u8; 3]);
            }
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_source_daemon_asks_its_peer_itself_and_hears_its_record() {
    let rt = runtime();
    rt.block_on(async {
        let p = pair().await;
        let b = p.b.peer_id();
        let session = new_session();
        for started in [true, false] {
            *p.b_started.lock().unwrap() = Some(started);
            let answer = p.mig_a.ask(b, session).await;
            assert_eq!(answer.unwrap(), started);
        }
        // A peer that does not know yet answers once it does (within its answer timeout).
        *p.b_started.lock().unwrap() = None;
        let knows = p.b_started.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            *knows.lock().unwrap() = Some(true);
        });
        assert!(p.mig_a.ask(b, session).await.unwrap());
    });
}
