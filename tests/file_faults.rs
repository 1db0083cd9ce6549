//! Files under fault (API.md §3–§4, `src/transfer.rs`): a hostile pinned peer speaking raw file
//! frames (hostile names, a corrupted chunk, a whole file whose SHA-256 does not match, later
//! offers that would replace a verified file), and a sending node killed with SIGKILL in the
//! middle of a large file.
//!
//! Everything runs on loopback and every wait is bounded.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{rogue_and_node, Recorder, Rogue};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::time::{timeout, Instant};

use ferry::wire::{
    self, Code, Encoding, FileChunk, FileEnd, FileOffer, FileRef, FileResume, FrameError, Message, RefusalKind, Request,
};

const CHUNK: usize = ferry::transfer::CHUNK;
/// The bound on one exchange with the node.
const STEP: Duration = Duration::from_secs(20);
/// The bound on a whole test.
const WHOLE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// A pinned peer speaking raw frames
// ---------------------------------------------------------------------------------------------

/// One file stream opened by the rogue.
struct FileStream {
    tx: quinn::SendStream,
    rx: quinn::RecvStream,
}

/// The code a stream was reset with, if that is why reading failed.
fn reset_code(e: &FrameError) -> Option<Code> {
    let FrameError::Io(e) = e else { return None };
    match e.get_ref()?.downcast_ref::<quinn::ReadError>()? {
        quinn::ReadError::Reset(code) => Code::from_varint(*code),
        _ => None,
    }
}

impl Rogue {
    /// Offers `size` bytes named `name` for `key` and reads the node's answer. An offer of a key
    /// whose earlier stream is still being wound up is reset with `Done`: it is offered again, as
    /// a real sender would.
    async fn offer(&self, key: &str, name: &str, size: u64) -> (FileStream, Result<Message, Option<Code>>) {
        let offer = Message::FileOffer(FileOffer {
            version: wire::PROTOCOL_VERSION,
            key: key.to_owned(),
            name: name.to_owned(),
            size,
        });
        let deadline = Instant::now() + STEP;
        loop {
            let (mut tx, rx) = self.connection.open_bi().await.unwrap();
            wire::write(&mut tx, &offer).await.unwrap();
            let mut stream = FileStream { tx, rx };
            let answer = stream.answer().await;
            if answer == Err(Some(Code::Done)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            return (stream, answer);
        }
    }

    /// Offers the file and expects `FileResume`; the stream and the offset the node holds.
    async fn offer_expecting_resume(&self, key: &str, name: &str, data: &[u8]) -> (FileStream, u64) {
        match self.offer(key, name, data.len() as u64).await {
            (stream, Ok(Message::FileResume(FileResume { have }))) => (stream, have),
            (_, other) => panic!("expected FileResume for {key}, got {other:?}"),
        }
    }

    /// Sends `message` on a new stream and returns the answer, or the code the stream was reset with.
    async fn exchange(&self, message: &Message) -> Result<Message, Option<Code>> {
        let (mut tx, rx) = self.connection.open_bi().await.unwrap();
        wire::write(&mut tx, message).await.unwrap();
        let _ = tx.finish();
        FileStream { tx, rx }.answer().await
    }
}

impl FileStream {
    /// The next message from the node, or the code it reset the stream with.
    async fn answer(&mut self) -> Result<Message, Option<Code>> {
        match timeout(STEP, wire::read(&mut self.rx)).await.expect("the node answers in time") {
            Ok(m) => Ok(m),
            Err(e) => match reset_code(&e) {
                Some(code) => Err(Some(code)),
                None => panic!("unexpected stream error: {e}"),
            },
        }
    }

    /// Sends chunk `index` of `data` (header frame, then the raw bytes); `corrupt` flips a byte of
    /// the bytes after the header's SHA-256 was computed. A write error (the node stopped the
    /// stream) is returned, not a panic.
    async fn chunk(&mut self, data: &[u8], index: usize, corrupt: bool) -> Result<(), quinn::WriteError> {
        let start = index * CHUNK;
        let bytes = &data[start..(start + CHUNK).min(data.len())];
        let header = FileChunk { offset: start as u64, len: bytes.len() as u32, sha256: Sha256::digest(bytes).into() };
        self.tx.write_all(&wire::encode(&Message::FileChunk(header)).unwrap()).await?;
        if corrupt {
            let mut bad = bytes.to_vec();
            bad[bytes.len() / 2] ^= 0x5a;
            self.tx.write_all(&bad).await
        } else {
            self.tx.write_all(bytes).await
        }
    }

    /// Sends every chunk from byte `from` (a chunk boundary) to the end.
    async fn rest(&mut self, data: &[u8], from: u64) {
        assert_eq!(from % CHUNK as u64, 0, "resumes on a chunk boundary");
        for index in (from as usize / CHUNK)..chunks(data) {
            self.chunk(data, index, false).await.unwrap();
        }
    }

    /// Sends `FileEnd{sha256}` and finishes the stream; the node's answer.
    async fn end(&mut self, sha256: [u8; 32]) -> Result<Message, Option<Code>> {
        self.tx.write_all(&wire::encode(&Message::FileEnd(FileEnd { sha256 })).unwrap()).await.unwrap();
        let _ = self.tx.finish();
        self.answer().await
    }
}

fn chunks(data: &[u8]) -> usize {
    data.len().div_ceil(CHUNK)
}

/// `size` repeatable pseudo-random bytes, different for each `seed`.
fn bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Every path below `root` (not following symbolic links), relative to it.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path.clone());
            }
            out.insert(path.strip_prefix(root).unwrap().to_owned());
        }
    }
    out
}

/// The request `key` (with a file) from the rogue to service 1.
fn request_with(key: &str, file: FileRef) -> Request {
    Request {
        version: wire::PROTOCOL_VERSION,
        id: key.to_owned(),
        service: "1".into(),
        method: "POST".into(),
        path: "/upload".into(),
        form: vec![],
        encoding: Encoding::Form,
        headers: vec![],
        conversation: None,
        timeout_ms: 5_000,
        file: Some(file),
        idempotency_key: None,
    }
}

// ---------------------------------------------------------------------------------------------
// a. Hostile names
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_land_inside_the_peers_request_folder() {
    timeout(WHOLE, async {
        let (rogue, b, service, root) = rogue_and_node().await;
        let evil = Path::new("/tmp/evil");
        let evil_before = evil.exists();
        let before = tree(root.path());
        let long = format!("{}.bin", "Ж".repeat(150)); // 300 characters and 304 bytes
        let names = [
            "../../../../tmp/evil".to_owned(),
            "/etc/cron.d/evil".to_owned(),
            "..\\..\\..\\windows\\evil.bat".to_owned(),
            "a/b\\c/../../d".to_owned(),
            "evil\n\r\t\u{7}\u{1b}[31mred\u{0}\u{7f}.txt".to_owned(),
            "x".repeat(300),
            long,
            "..".to_owned(),
            ".".to_owned(),
            "".to_owned(),
        ];
        let received = b.dir.join("data/received/rogue");
        let mut expected = BTreeSet::new();
        for (i, name) in names.iter().enumerate() {
            let key = format!("0199-hostile-name-{i}");
            let data = bytes(if i == 0 { CHUNK + 17 } else { 1000 + i }, i as u64);
            let (mut stream, have) = rogue.offer_expecting_resume(&key, name, &data).await;
            assert_eq!(have, 0, "{name:?}: nothing held yet");
            stream.rest(&data, 0).await;
            match stream.end(sha(&data)).await {
                Ok(Message::FileDone(done)) => assert_eq!(done.sha256, sha(&data), "{name:?}"),
                other => panic!("{name:?}: expected FileDone, got {other:?}"),
            }
            let folder = received.join(&key);
            let files: Vec<PathBuf> = std::fs::read_dir(&folder)
                .unwrap_or_else(|e| panic!("{name:?}: no folder {}: {e}", folder.display()))
                .map(|e| e.unwrap().path())
                .collect();
            assert_eq!(files.len(), 1, "{name:?}: one file in {}: {files:?}", folder.display());
            let path = &files[0];
            assert_eq!(path.parent(), Some(folder.as_path()), "{name:?}");
            let landed = path.file_name().unwrap().to_str().expect("a UTF-8 name");
            assert_eq!(landed, ferry::transfer::safe_name(name), "{name:?}");
            assert!(!landed.is_empty() && landed.len() <= 200, "{name:?} → {landed:?}");
            assert!(!landed.contains(['/', '\\']), "{name:?} → {landed:?}");
            assert!(!landed.chars().any(char::is_control), "{name:?} → {landed:?}");
            assert!(!landed.starts_with('.'), "{name:?} → {landed:?}: no hidden or dot-dot name");
            assert!(std::fs::symlink_metadata(path).unwrap().file_type().is_file(), "{name:?}: a regular file");
            assert_eq!(std::fs::read(path).unwrap(), data, "{name:?}: intact");
            expected.insert(folder.strip_prefix(root.path()).unwrap().to_owned());
            expected.insert(path.strip_prefix(root.path()).unwrap().to_owned());
        }

        // Nothing but those folders and files appeared anywhere under the test's root.
        let partial = b.dir.join("data/partial/rogue");
        assert!(std::fs::read_dir(&partial).map(|mut d| d.next().is_none()).unwrap_or(true), "no partial file left");
        for dir in [b.dir.join("data/received"), received.clone(), b.dir.join("data/partial"), partial] {
            expected.insert(dir.strip_prefix(root.path()).unwrap().to_owned());
        }
        let after = tree(root.path());
        let unexpected: Vec<_> = after.difference(&before).filter(|p| !expected.contains(*p)).collect();
        assert!(unexpected.is_empty(), "created outside the request folders: {unexpected:#?}");
        if !evil_before {
            assert!(!evil.exists(), "/tmp/evil was created");
        }
        assert!(service.seen().is_empty(), "a file alone calls no service");
    })
    .await
    .expect("the test ends in time");
}

// ---------------------------------------------------------------------------------------------
// b. A corrupted chunk
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_resets_the_stream_and_the_transfer_resumes_after_the_good_ones() {
    timeout(WHOLE, async {
        let (rogue, b, service, _root) = rogue_and_node().await;
        let key = "0199-corrupt-chunk";
        let data = bytes(6 * CHUNK + 777, 42);
        let (mut stream, have) = rogue.offer_expecting_resume(key, "data.bin", &data).await;
        assert_eq!(have, 0);
        for index in 0..3 {
            stream.chunk(&data, index, false).await.unwrap();
        }
        // The fourth chunk's bytes do not match the SHA-256 in its header. The node may stop the
        // stream while the bytes are still being written: only its answer counts.
        let _ = stream.chunk(&data, 3, true).await;
        assert_eq!(stream.answer().await, Err(Some(Code::ChunkCorrupt)), "the stream is reset with ChunkCorrupt");
        drop(stream);

        let part = b.dir.join(format!("data/partial/rogue/{key}.part"));
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 3 * CHUNK as u64, "three verified chunks kept");

        let (mut stream, have) = rogue.offer_expecting_resume(key, "data.bin", &data).await;
        assert_eq!(have, 3 * CHUNK as u64, "the offer of the same key resumes after the three good chunks");
        stream.rest(&data, have).await;
        match stream.end(sha(&data)).await {
            Ok(Message::FileDone(done)) => assert_eq!(done.sha256, sha(&data)),
            other => panic!("expected FileDone, got {other:?}"),
        }
        let landed = b.dir.join(format!("data/received/rogue/{key}/data.bin"));
        assert_eq!(std::fs::read(&landed).unwrap(), data, "the file on disk is the file sent");
        assert!(!part.exists(), "the partial file became the received one");

        // The verified file is handed to the service with a request that refers to it.
        let file =
            FileRef { field: "doc".into(), name: "data.bin".into(), size: data.len() as u64, sha256: sha(&data) };
        match rogue.exchange(&Message::Request(request_with(key, file))).await {
            Ok(Message::Response(r)) => assert_eq!(r.status, 200),
            other => panic!("expected a response, got {other:?}"),
        }
        let seen = service.seen();
        assert_eq!(seen.len(), 1);
        let form: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&seen[0].body).unwrap();
        assert_eq!(PathBuf::from(&form["doc"]), landed);
    })
    .await
    .expect("the test ends in time");
}

// ---------------------------------------------------------------------------------------------
// c. A whole file that does not match its SHA-256
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_whole_sha256_does_not_match_is_refused_and_discarded() {
    timeout(WHOLE, async {
        let (rogue, b, service, _root) = rogue_and_node().await;
        let key = "0199-wrong-whole-hash";
        let data = bytes(3 * CHUNK + 5, 7);
        let mut wrong = sha(&data);
        wrong[0] ^= 1;
        let (mut stream, have) = rogue.offer_expecting_resume(key, "data.bin", &data).await;
        assert_eq!(have, 0);
        stream.rest(&data, 0).await;
        match stream.end(wrong).await {
            Ok(Message::Refused(r)) => assert_eq!(r.kind, RefusalKind::BadRequest, "{r:?}"),
            other => panic!("expected Refused, got {other:?}"),
        }
        drop(stream);

        // Discarded: no partial file, nothing received.
        assert!(!b.dir.join(format!("data/partial/rogue/{key}.part")).exists(), "the partial file is removed");
        let folder = b.dir.join(format!("data/received/rogue/{key}"));
        assert!(
            std::fs::read_dir(&folder).map(|mut d| d.next().is_none()).unwrap_or(true),
            "nothing received under {}",
            folder.display()
        );

        // A request referring to it, with either hash, is refused and the service is not called.
        for sha256 in [sha(&data), wrong] {
            let file = FileRef { field: "file".into(), name: "data.bin".into(), size: data.len() as u64, sha256 };
            let sync = Message::Request(request_with(key, file.clone()));
            match rogue.exchange(&sync).await {
                Ok(Message::Refused(r)) => assert_eq!(r.kind, RefusalKind::BadRequest, "{r:?}"),
                other => panic!("expected the sync request to be refused, got {other:?}"),
            }
            let queued = Message::AsyncRequest(wire::AsyncRequest {
                request: request_with(key, file),
                reply: false,
                expires_at_ms: i64::MAX / 2,
            });
            match rogue.exchange(&queued).await {
                Ok(Message::Refused(r)) => assert_eq!(r.kind, RefusalKind::BadRequest, "{r:?}"),
                other => panic!("expected the async request to be refused, got {other:?}"),
            }
        }
        let (status, env) = b.get(&format!("/v1/requests/{key}")).await;
        assert_eq!(status, 404, "the refused request was not stored: {env}");

        // A new offer of the same key starts from nothing.
        let (mut stream, have) = rogue.offer_expecting_resume(key, "data.bin", &data).await;
        assert_eq!(have, 0, "nothing of the discarded file is kept");
        let _ = stream.tx.reset(Code::Cancelled.varint());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(service.seen().is_empty(), "the service never saw the file: {:?}", service.seen());
    })
    .await
    .expect("the test ends in time");
}

// ---------------------------------------------------------------------------------------------
// A received file stays as it was verified
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_handed_to_the_service_is_not_replaced_by_a_later_offer_of_the_same_key() {
    timeout(WHOLE, async {
        let (rogue, _b, service, _root) = rogue_and_node().await;
        let key = "0199-replaced";
        let first = bytes(CHUNK + 10, 1);
        let (mut stream, _) = rogue.offer_expecting_resume(key, "report.pdf", &first).await;
        stream.rest(&first, 0).await;
        assert!(matches!(stream.end(sha(&first)).await, Ok(Message::FileDone(_))));
        let file =
            FileRef { field: "file".into(), name: "report.pdf".into(), size: first.len() as u64, sha256: sha(&first) };
        match rogue.exchange(&Message::Request(request_with(key, file))).await {
            Ok(Message::Response(r)) => assert_eq!(r.status, 200),
            other => panic!("expected a response, got {other:?}"),
        }
        let seen = service.seen();
        let form: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&seen[0].body).unwrap();
        let handed = PathBuf::from(&form["file"]);
        assert_eq!(std::fs::read(&handed).unwrap(), first);

        // The same key again, another file of another size, under the same name.
        let second = bytes(2 * CHUNK + 20, 2);
        let (mut stream, answer) = rogue.offer(key, "report.pdf", second.len() as u64).await;
        if let Ok(Message::FileResume(FileResume { have })) = answer {
            stream.rest(&second, have).await;
            let _ = stream.end(sha(&second)).await;
        }
        let now = std::fs::read(&handed).unwrap();
        assert!(
            now == first,
            "the file the service was given ({}) must still hold what was verified and handed over: \
             {} bytes, SHA-256 {}; it now holds {} bytes, SHA-256 {}",
            handed.display(),
            first.len(),
            hex::encode(sha(&first)),
            now.len(),
            hex::encode(sha(&now))
        );
    })
    .await
    .expect("the test ends in time");
}

/// Sends `data` as `name` under `key` and expects `FileDone`.
async fn deliver(rogue: &Rogue, key: &str, name: &str, data: &[u8]) {
    let (mut stream, have) = rogue.offer_expecting_resume(key, name, data).await;
    assert_eq!(have, 0, "{key:?}");
    stream.rest(data, 0).await;
    match stream.end(sha(data)).await {
        Ok(Message::FileDone(done)) => assert_eq!(done.sha256, sha(data), "{key:?}"),
        other => panic!("{key:?}: expected FileDone, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_file_is_not_replaced_through_another_key_that_lands_in_the_same_place() {
    timeout(WHOLE, async {
        let (rogue, b, _service, _root) = rogue_and_node().await;
        let received = b.dir.join("data/received/rogue");
        let mut broken = Vec::new();

        // Two request ids that differ only in characters safe_name replaces: one folder.
        let (first, second) = (bytes(1000, 1), bytes(2000, 2));
        deliver(&rogue, "0199-collide\u{1}", "doc.txt", &first).await;
        let landed = received.join(ferry::transfer::safe_name("0199-collide\u{1}")).join("doc.txt");
        assert_eq!(std::fs::read(&landed).unwrap(), first);
        deliver_if_accepted(&rogue, "0199-collide\u{2}", "doc.txt", &second).await;
        if std::fs::read(&landed).unwrap() != first {
            broken.push(format!("request ids 0199-collide\\u{{1}} and \\u{{2}}: {} was replaced", landed.display()));
        }

        // A request's file named `a-b`, then reply files `R/z` named `b` and `R/a` named `b`: the
        // second reply file falls back to `{seq}-{name}` = `a-b`.
        let (request, reply_z, reply_a) = (bytes(1000, 3), bytes(1100, 4), bytes(1200, 5));
        deliver(&rogue, "0199-fallback", "a-b", &request).await;
        let landed = received.join("0199-fallback/a-b");
        assert_eq!(std::fs::read(&landed).unwrap(), request);
        deliver_if_accepted(&rogue, "0199-fallback/z", "b", &reply_z).await;
        deliver_if_accepted(&rogue, "0199-fallback/a", "b", &reply_a).await;
        if std::fs::read(&landed).unwrap() != request {
            broken.push(format!("reply key 0199-fallback/a named b: {} was replaced", landed.display()));
        }
        assert!(broken.is_empty(), "verified files replaced: {broken:#?}");
    })
    .await
    .expect("the test ends in time");
}

/// Sends `data` under `key` if the node accepts the offer (a refusal is fine).
async fn deliver_if_accepted(rogue: &Rogue, key: &str, name: &str, data: &[u8]) {
    if let (mut stream, Ok(Message::FileResume(FileResume { have }))) = rogue.offer(key, name, data.len() as u64).await
    {
        stream.rest(data, have).await;
        let _ = stream.end(sha(data)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// d. The sending node killed mid-file
// ---------------------------------------------------------------------------------------------

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A node directory made by `ferry init`, run as a `ferry run` child process. Dropping it kills
/// the process; if the test is failing, its log is printed.
struct Process {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    api: SocketAddr,
    link: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    client: reqwest::Client,
}

impl Process {
    fn create(root: &Path, name: &str) -> Process {
        let (api, link) = (free_tcp(), free_udp());
        let dir = root.join(name);
        ferry::cli::init::init(&dir, name, link, api).unwrap();
        Process {
            name: name.to_owned(),
            config: dir.join("config/ferry.toml"),
            log: dir.join("run.log"),
            dir,
            api,
            link,
            child: None,
            client: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn pin(&self, other: &Process) {
        let cert = other.dir.join("certs/node.pem");
        ferry::cli::edit::add_peer(&self.config, &other.name, &other.link.to_string(), &cert).unwrap();
    }

    async fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        writeln!(&log, "==== {} started ====", self.name).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .env_remove("FERRY_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info,quinn=warn")
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ferry run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.client.get(self.url("/v1/health")).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited with {status} before serving", self.name);
            }
            assert!(Instant::now() < deadline, "{} did not serve within 15 s", self.name);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{} ended by SIGKILL: {status}", self.name);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn status(&self, id: &str) -> Value {
        match self.client.get(self.url(&format!("/v1/requests/{id}"))).send().await {
            Ok(r) => r.json::<Value>().await.map(|e| e["data"].clone()).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- log of `ferry run` for {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// Writes `size` bytes of a repeatable pattern to `path`; its SHA-256 in hex.
fn make_file(path: &Path, size: u64) -> String {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let mut block = bytes(1 << 20, 99);
    let mut left = size;
    let mut n = 0u64;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        block[..8].copy_from_slice(&n.to_le_bytes()); // no two blocks alike
        n += 1;
        file.write_all(&block[..take]).unwrap();
        hasher.update(&block[..take]);
        left -= take as u64;
    }
    file.flush().unwrap();
    hex::encode(hasher.finalize())
}

fn sha_of(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).unwrap();
        if n == 0 {
            return hex::encode(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Progress events for `id` from a node's `/v1/events`, answering the heartbeat every 500 ms.
async fn progress_events(api: SocketAddr, id: String) -> tokio::sync::mpsc::UnboundedReceiver<(u64, u64)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{api}/v1/events")).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if ws.send(tokio_tungstenite::tungstenite::Message::text("OK")).await.is_err() {
                        return;
                    }
                }
                next = ws.next() => match next {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                        let e: Value = serde_json::from_str(&t).unwrap();
                        if e["type"] == "progress" && e["id"] == id.as_str() {
                            let done = e["bytes_done"].as_u64().unwrap();
                            let total = e["bytes_total"].as_u64().unwrap();
                            if tx.send((done, total)).is_err() {
                                return;
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_resumes_after_the_sender_is_killed_midway() {
    timeout(WHOLE, async {
        let service = Recorder::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut a = Process::create(root.path(), "org-a");
        let mut b = Process::create(root.path(), "org-b");
        a.pin(&b);
        b.pin(&a);
        let allow = vec!["org-a".to_owned()];
        ferry::cli::edit::add_service(&b.config, "1", &service.base_url(), &allow).unwrap();
        let size = 192 * CHUNK as u64;
        let source = a.dir.join("outbox/big.bin");
        let sha = make_file(&source, size);
        a.start().await;
        b.start().await;

        let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "mode": "async", "file": source});
        let r = a.client.post(a.url("/v1/requests")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let env: Value = r.json().await.unwrap();
        let id = env["data"]["id"].as_str().unwrap().to_owned();

        // Kill org-a once part of the file is on org-b's disk.
        let part = b.dir.join(format!("data/partial/org-a/{id}.part"));
        let threshold = 16 * CHUNK as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        let kept = loop {
            let len = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            if len >= threshold {
                a.kill();
                break len;
            }
            assert!(Instant::now() < deadline, "the transfer never reached {threshold} bytes");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        assert!(kept < size, "killed before the end: {kept} of {size}");
        let mut events = progress_events(b.api, id.clone()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let kept_after = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        eprintln!("org-a killed with {kept} bytes on org-b's disk ({kept_after} a moment later) of {size}");

        a.start().await;
        let (first, total) = timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("a progress event from org-b after the restart")
            .expect("the event stream stays open");
        assert_eq!(total, size);
        let floor = kept / CHUNK as u64 * CHUNK as u64;
        assert!(first > 0 && first >= floor && first < size, "resumed at {first}, not from zero (kept {kept})");
        eprintln!("the transfer resumed at {first}: {} of {size} bytes sent again", size - first);

        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            let status = a.status(&id).await;
            if status["state"] == "success" || status["state"] == "failed" {
                break status;
            }
            assert!(Instant::now() < deadline, "the request did not end: {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status["state"], "success", "{status}");
        assert_eq!(status["transfer"]["sha256"], sha.as_str(), "{status}");
        assert_eq!(status["transfer"]["bytes_done"], size, "{status}");
        assert!(b.log_text().contains("resuming a file transfer"), "org-b logged the resumption");

        service.wait_for(1, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let seen = service.seen();
        let calls: Vec<_> =
            seen.iter().filter(|s| s.headers.get("x-ferry-request-id").map(String::as_str) == Some(&id)).collect();
        assert_eq!(calls.len(), 1, "the service is called exactly once: {seen:?}");
        assert_eq!(seen.len(), 1, "and nothing else: {seen:?}");
        let form: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&calls[0].body).unwrap();
        let got = PathBuf::from(&form["file"]);
        assert!(got.starts_with(b.dir.join("data/received/org-a").join(&id)), "{}", got.display());
        assert_eq!(std::fs::metadata(&got).unwrap().len(), size);
        assert_eq!(sha_of(&got), sha, "the received file has the right SHA-256");
        assert!(!part.exists(), "no partial file left");
    })
    .await
    .expect("the test ends in time");
}
