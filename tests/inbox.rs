//! The watched inbox: approving a download by dropping a file, rejecting, half-written files,
//! files that arrived while the node was down, and unknown callback ids.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::{pair, Pair, Recorder};

const WITHIN: Duration = Duration::from_secs(20);

fn inbox(p: &Pair) -> PathBuf {
    p.b.dir.join("data/inbox")
}

/// Sends a reply-mode request with a callback; returns its id and the callback id org-b's service got.
async fn download(p: &Pair, host: &Recorder, n: usize) -> (String, String) {
    let body = json!({"peer": "org-b", "service": "1", "path": "/download", "method": "POST", "form": {"doc": n},
                      "mode": "async", "reply": true, "callback": {"url": format!("{}/cb", host.base_url())}});
    let (_, env) = p.a.request(body).await;
    let id = env["data"]["id"].as_str().unwrap().to_owned();
    let seen = p.service.wait_for(n, WITHIN).await;
    let form: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&seen[n - 1].body).unwrap();
    (id, form["callbackId"].clone())
}

async fn wait_for_path(path: &Path, present: bool) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while path.exists() != present {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never {}",
            path.display(),
            if present { "appeared" } else { "went" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fields(seen: &support::Seen) -> std::collections::HashMap<String, String> {
    serde_urlencoded::from_str(&seen.body).unwrap()
}

#[tokio::test]
async fn a_file_dropped_into_the_inbox_answers_the_request() {
    let p = pair().await;
    // The node's group may drop files in it, and what they make there stays in the group.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(inbox(&p)).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o2770, "{mode:o}");
    let host = Recorder::start().await;
    let (id, callback_id) = download(&p, &host, 1).await;
    let pending = inbox(&p).join(format!(".pending/{callback_id}.json"));
    wait_for_path(&pending, true).await;
    let listed: Value = serde_json::from_slice(&std::fs::read(&pending).unwrap()).unwrap();
    assert_eq!(listed["peer"], "org-a");
    assert_eq!(listed["path"], "/download");
    assert_eq!(listed["form"]["doc"], 1);

    // Written under an ignored name, then renamed into place.
    let folder = inbox(&p).join(&callback_id);
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("report.csv.part"), "a,b\n1,2\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(p.a.get(&format!("/v1/requests/{id}")).await.1["data"]["state"], "doing", "a .part file is ignored");
    std::fs::rename(folder.join("report.csv.part"), folder.join("report.csv")).unwrap();

    let status = p.a.wait_state(&id, "success", WITHIN).await;
    let file = status["replies"][0]["file"].as_str().unwrap().to_owned();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a,b\n1,2\n");
    assert_eq!(status["replies"][0]["data"], json!({"file_name": "report.csv"}));
    let calls = host.wait_for(1, WITHIN).await;
    assert_eq!(fields(&calls[0])["file"], file);
    wait_for_path(&inbox(&p).join(format!(".sent/{callback_id}/report.csv")), true).await;
    wait_for_path(&pending, false).await;
    assert!(!folder.exists(), "the emptied folder is gone");
}

#[tokio::test]
async fn a_reject_file_fails_the_request_with_its_text() {
    let p = pair().await;
    let host = Recorder::start().await;
    let (id, callback_id) = download(&p, &host, 1).await;
    std::fs::write(inbox(&p).join(format!("{callback_id}.reject")), "not for you\n").unwrap();
    let status = p.a.wait_state(&id, "failed", WITHIN).await;
    assert_eq!(status["error"], "not for you");
    assert_eq!(fields(&host.wait_for(1, WITHIN).await[0])["error"], "not for you");
    wait_for_path(&inbox(&p).join(format!(".sent/{callback_id}/{callback_id}.reject")), true).await;
}

#[tokio::test]
async fn a_file_written_in_place_is_not_sent_half_written() {
    let p = pair().await;
    let host = Recorder::start().await;
    let (id, callback_id) = download(&p, &host, 1).await;
    let folder = watched_folder(&p, &callback_id).await;
    let mut file = std::fs::File::create(folder.join("slow.bin")).unwrap();
    file.write_all(&[1u8; 100_000]).unwrap();
    file.flush().unwrap();
    // Longer than two scans (size and times stay the same, but the file is still open for
    // writing), and well within inbox::STABLE, after which an idle open file is taken.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    file.write_all(&[2u8; 50_000]).unwrap();
    drop(file);
    let status = p.a.wait_state(&id, "success", WITHIN).await;
    let got = std::fs::read(status["replies"][0]["file"].as_str().unwrap()).unwrap();
    assert_eq!(got.len(), 150_000, "the whole file, not the first half");
    assert!(got[100_000..].iter().all(|b| *b == 2));
}

#[tokio::test]
async fn files_that_arrived_while_the_node_was_down_are_sent_at_start() {
    let mut p = pair().await;
    let host = Recorder::start().await;
    let (id, callback_id) = download(&p, &host, 1).await;
    wait_for_path(&inbox(&p).join(format!(".pending/{callback_id}.json")), true).await;
    p.b.stop().await;
    let folder = inbox(&p).join(&callback_id);
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("late.txt"), "while you were away").unwrap();
    p.b.start().await;
    let status = p.a.wait_state(&id, "success", WITHIN).await;
    assert_eq!(std::fs::read_to_string(status["replies"][0]["file"].as_str().unwrap()).unwrap(), "while you were away");
}

#[tokio::test]
async fn a_file_for_an_unknown_callback_id_is_set_aside() {
    let p = pair().await;
    let folder = inbox(&p).join("0123456789abcdef");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("stray.txt"), "who wants this").unwrap();
    let moved = inbox(&p).join(".unmatched/stray.txt");
    wait_for_path(&moved, true).await;
    assert_eq!(std::fs::read_to_string(moved).unwrap(), "who wants this", "never deleted");
}

/// Waits until this process's inotify watches `folder`: a file made in it from then on is seen
/// by the inbox watcher (a new folder is watched a moment after it is made).
async fn wait_watched(folder: &Path) {
    use std::os::unix::fs::MetadataExt;
    let inode = format!(" ino:{:x} ", std::fs::metadata(folder).unwrap().ino());
    let watched = || {
        std::fs::read_dir("/proc/self/fd").unwrap().flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == "anon_inode:inotify")
                && std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(fd.file_name()))
                    .is_ok_and(|info| info.contains(&inode))
        })
    };
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !watched() {
        assert!(tokio::time::Instant::now() < deadline, "{} is never watched", folder.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new `<callback_id>/` folder, once the watcher watches it.
async fn watched_folder(p: &Pair, callback_id: &str) -> PathBuf {
    let folder = inbox(p).join(callback_id);
    std::fs::create_dir(&folder).unwrap();
    wait_watched(&folder).await;
    folder
}

/// Waits until `name` is set aside in `inbox/.failed/` with its reason next to it; the reason.
async fn wait_failed(p: &Pair, name: &std::ffi::OsStr) -> String {
    let failed = inbox(p).join(".failed");
    let mut reason_name = name.to_owned();
    reason_name.push(".reason");
    wait_for_path(&failed.join(&reason_name), true).await;
    assert!(failed.join(name).symlink_metadata().is_ok(), "{name:?} is moved, never deleted");
    let reason = std::fs::read_to_string(failed.join(reason_name)).unwrap();
    assert!(!reason.trim().is_empty(), "{name:?} has a reason");
    reason
}

#[tokio::test]
async fn names_that_are_not_utf8_are_set_aside_with_a_reason() {
    use std::os::unix::ffi::OsStrExt;
    let p = pair().await;
    let host = Recorder::start().await;
    let (id, callback_id) = download(&p, &host, 1).await;
    let bad_reject = std::ffi::OsStr::from_bytes(b"\xff\xfe.reject");
    std::fs::write(inbox(&p).join(bad_reject), "no").unwrap();
    let bad_folder = std::ffi::OsStr::from_bytes(b"\xff\xfe");
    std::fs::create_dir(inbox(&p).join(bad_folder)).unwrap();
    std::fs::write(inbox(&p).join(bad_folder).join("a.txt"), "a").unwrap();
    let folder = inbox(&p).join(&callback_id);
    std::fs::create_dir(&folder).unwrap();
    let bad_file = std::ffi::OsStr::from_bytes(b"r\xe9sum\xe9.txt");
    std::fs::write(folder.join(bad_file), "latin-1").unwrap();
    std::fs::write(folder.join("answer.txt"), "the answer").unwrap();

    let status = p.a.wait_state(&id, "success", WITHIN).await;
    assert_eq!(std::fs::read_to_string(status["replies"][0]["file"].as_str().unwrap()).unwrap(), "the answer");
    for name in [bad_reject, bad_folder, bad_file] {
        assert!(wait_failed(&p, name).await.contains("UTF-8"), "the reason says why");
    }
}

#[tokio::test]
async fn entries_that_cannot_be_read_do_not_stop_the_inbox() {
    let p = pair().await;
    let host = Recorder::start().await;
    let (id, callback_id) = download(&p, &host, 1).await;
    let (_, other_callback_id) = download(&p, &host, 2).await;
    let dir = inbox(&p);
    // Each fails for root too: a link to nowhere, a FIFO, a folder, where a reason is expected.
    std::os::unix::fs::symlink("/nonexistent/reason", dir.join("0123456789abcdef.reject")).unwrap();
    let fifo = dir.join(format!("{other_callback_id}.reject"));
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RUSR, 0).unwrap();
    std::fs::create_dir(dir.join("fedcba9876543210.reject")).unwrap();
    let folder = dir.join(&callback_id);
    std::fs::create_dir(&folder).unwrap();
    std::os::unix::fs::symlink(p.b.dir.join("config/ferry.toml"), folder.join("config.toml")).unwrap();
    std::fs::write(folder.join("answer.txt"), "the answer").unwrap();

    let status = p.a.wait_state(&id, "success", WITHIN).await;
    assert_eq!(std::fs::read_to_string(status["replies"][0]["file"].as_str().unwrap()).unwrap(), "the answer");
    for name in
        ["0123456789abcdef.reject", &format!("{other_callback_id}.reject"), "fedcba9876543210.reject", "config.toml"]
    {
        wait_failed(&p, name.as_ref()).await;
    }
    assert!(
        dir.join(format!(".pending/{other_callback_id}.json")).exists(),
        "a FIFO rejects nothing: the request still awaits its reply"
    );
}

#[tokio::test]
async fn a_hard_link_made_in_the_inbox_is_taken() {
    let p = pair().await;
    let host = Recorder::start().await;
    let (id, callback_id) = download(&p, &host, 1).await;
    let folder = watched_folder(&p, &callback_id).await;
    let outside = p.b.dir.join("report.txt");
    std::fs::write(&outside, "linked in").unwrap();
    std::fs::hard_link(&outside, folder.join("report.txt")).unwrap();
    let status = p.a.wait_state(&id, "success", WITHIN).await;
    assert_eq!(std::fs::read_to_string(status["replies"][0]["file"].as_str().unwrap()).unwrap(), "linked in");
    wait_for_path(&inbox(&p).join(format!(".sent/{callback_id}/report.txt")), true).await;
}

#[tokio::test]
async fn a_file_moved_in_from_another_file_system_is_taken() {
    use std::os::unix::fs::MetadataExt;
    let p = pair().await;
    let elsewhere = Path::new("/dev/shm");
    let dev = |path: &Path| std::fs::metadata(path).map(|m| m.dev()).ok();
    if dev(elsewhere).is_none() || dev(elsewhere) == dev(p.root.path()) {
        let why = format!("{} is missing or on the file system of {}", elsewhere.display(), p.root.path().display());
        assert!(std::env::var("CI").as_deref() != Ok("true"), "cannot move a file across file systems: {why}");
        eprintln!("skipped: cannot move a file across file systems: {why}");
        return;
    }
    let host = Recorder::start().await;
    let (id, callback_id) = download(&p, &host, 1).await;
    let folder = watched_folder(&p, &callback_id).await;
    let source = tempfile::tempdir_in(elsewhere).unwrap();
    std::fs::write(source.path().join("moved.txt"), "from another file system").unwrap();
    let moved = std::process::Command::new("mv").arg(source.path().join("moved.txt")).arg(&folder).status().unwrap();
    assert!(moved.success());
    let status = p.a.wait_state(&id, "success", WITHIN).await;
    assert_eq!(
        std::fs::read_to_string(status["replies"][0]["file"].as_str().unwrap()).unwrap(),
        "from another file system"
    );
}

/// Replaces the folder `inbox/<name>` at once with a symbolic link to `target`, as a host in the
/// `ferry` group can; the folder itself is removed.
fn replace_with_link(p: &Pair, name: &str, target: &Path) {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let (folder, link) = (inbox(p).join(name), inbox(p).join(format!("{name}-link")));
    std::os::unix::fs::symlink(target, &link).unwrap();
    renameat_with(CWD, &link, CWD, &folder, RenameFlags::EXCHANGE).unwrap();
    std::fs::remove_dir_all(&link).unwrap(); // the folder, now under the link's name
}

/// Waits until the inbox scanned at least once from now on: a stray file dropped now is moved to
/// `.unmatched` only once two scans found it unchanged.
async fn wait_scanned(p: &Pair) {
    let stray = format!("{:016x}", rand_id());
    std::fs::create_dir(inbox(p).join(&stray)).unwrap();
    std::fs::write(inbox(p).join(&stray).join(format!("{stray}.txt")), "who wants this").unwrap();
    wait_for_path(&inbox(p).join(format!(".unmatched/{stray}.txt")), true).await;
}

/// A callback id nobody awaits, new at each call.
fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0xfeed_0000_0000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A folder outside the inbox holding a file `victim` that ferry must never touch.
fn outside_folder(p: &Pair) -> PathBuf {
    let outside = p.b.dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), "precious").unwrap();
    outside
}

#[tokio::test]
async fn a_pending_folder_swapped_for_a_link_is_never_emptied_through_it() {
    let p = pair().await;
    let outside = outside_folder(&p);
    replace_with_link(&p, ".pending", &outside);
    wait_scanned(&p).await;
    wait_scanned(&p).await;
    assert_eq!(std::fs::read_to_string(outside.join("victim")).unwrap(), "precious", "never deleted");
    assert!(inbox(&p).join(".pending").symlink_metadata().unwrap().is_symlink(), "a host's entry is left alone");
}

#[tokio::test]
async fn nothing_is_set_aside_through_a_failed_folder_swapped_for_a_link() {
    let p = pair().await;
    let outside = outside_folder(&p);
    replace_with_link(&p, ".failed", &outside);
    let fifo = inbox(&p).join("0123456789abcdef.reject");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RUSR, 0).unwrap();
    wait_scanned(&p).await;
    let names: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["victim"], "nothing is moved or written out of the inbox");
    assert!(fifo.symlink_metadata().is_ok(), "the entry stays where the host put it");
}

#[tokio::test]
async fn a_pending_file_is_never_written_through_a_planted_link() {
    let mut p = pair().await;
    let host = Recorder::start().await;
    let (_, callback_id) = download(&p, &host, 1).await;
    let listed = inbox(&p).join(format!(".pending/{callback_id}.json"));
    wait_for_path(&listed, true).await;
    p.b.stop().await;
    let victim = outside_folder(&p).join("victim");
    std::fs::remove_file(&listed).unwrap();
    std::os::unix::fs::symlink(&victim, inbox(&p).join(format!(".pending/{callback_id}.json.tmp"))).unwrap();
    p.b.start().await;
    wait_for_path(&listed, true).await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "never written through the link");
    assert!(listed.symlink_metadata().unwrap().is_file(), "the listing is a file of its own");
}

#[tokio::test]
async fn a_dot_folder_swapped_for_a_dangling_link_does_not_turn_the_inbox_off() {
    let mut p = pair().await;
    p.b.stop().await;
    replace_with_link(&p, ".failed", Path::new("/nonexistent/failed"));
    p.b.start().await;
    wait_scanned(&p).await;
    assert!(inbox(&p).join(".failed").symlink_metadata().unwrap().is_symlink(), "a host's entry is left alone");
}

/// A member that leaves the inbox to another (`[files] inbox = false`) takes nothing from it,
/// while a node watching it sets the same stray file aside at once (the test above).
#[tokio::test]
async fn a_node_with_the_inbox_off_leaves_it_to_another_member() {
    let mut p = support::unstarted_pair().await;
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&p.b.config_path).unwrap().parse().unwrap();
    doc["files"]["inbox"] = toml_edit::value(false);
    std::fs::write(&p.b.config_path, doc.to_string()).unwrap();
    p.a.start().await;
    p.b.start().await;
    let folder = inbox(&p).join("0123456789abcdef");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("stray.txt"), "for the member that watches").unwrap();
    // Several scans' time (every half second), and the file's stable time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(folder.join("stray.txt").exists(), "taken by a node whose inbox is off");
    assert!(!inbox(&p).join(".unmatched/stray.txt").exists());
}
