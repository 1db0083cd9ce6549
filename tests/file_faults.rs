//! Files under fault (API.md §3–§4, `src/transfer.rs`): a hostile pinned peer speaking raw file
//! frames (hostile names, a corrupted chunk, a whole file whose SHA-256 does not match, later
//! offers that would replace a verified file, offers left hanging that must not stay counted as
//! transfers), and a sending node killed with SIGKILL in the middle of a large file.
//!
//! Everything runs on loopback and every wait is bounded.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::files::{bytes, make_file, sha_of};
use support::process::{self, progress_events};
use support::{rogue_and_node, Recorder, Rogue};
use tokio::time::{timeout, Instant};

use ferry::wire::{
    self, Answer, Code, Encoding, FileChunk, FileChunkCrc, FileEnd, FileOffer, FilePart, FileRef, FileResume, Opening,
    RefusalKind, Request,
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
    /// The file-stream version offered: 1, chunks carry a SHA-256; 2, a CRC32C.
    version: u16,
}

impl Rogue {
    /// Offers `size` bytes named `name` for `key` and reads the node's answer. An offer of a key
    /// whose earlier stream is still being wound up is reset with `Done`: it is offered again, as
    /// a real sender would.
    async fn offer(&self, key: &str, name: &str, size: u64) -> (FileStream, Result<Answer, Option<Code>>) {
        self.offer_version(wire::FILE_VERSION, key, name, size).await
    }

    /// [`Rogue::offer`] of a file stream of `version`.
    async fn offer_version(
        &self,
        version: u16,
        key: &str,
        name: &str,
        size: u64,
    ) -> (FileStream, Result<Answer, Option<Code>>) {
        let offer = Opening::FileOffer(FileOffer { version, key: key.to_owned(), name: name.to_owned(), size });
        let deadline = Instant::now() + STEP;
        loop {
            let (mut tx, rx) = self.connection.open_bi().await.unwrap();
            wire::write(&mut tx, &offer).await.unwrap();
            let mut stream = FileStream { tx, rx, version };
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
        self.offer_version_expecting_resume(wire::FILE_VERSION, key, name, data).await
    }

    /// [`Rogue::offer_expecting_resume`] of a file stream of `version`.
    async fn offer_version_expecting_resume(
        &self,
        version: u16,
        key: &str,
        name: &str,
        data: &[u8],
    ) -> (FileStream, u64) {
        match self.offer_version(version, key, name, data.len() as u64).await {
            (stream, Ok(Answer::FileResume(FileResume { have }))) => (stream, have),
            (_, other) => panic!("expected FileResume for {key}, got {other:?}"),
        }
    }

    /// Sends `message` on a new stream and returns the answer, or the code the stream was reset with.
    async fn exchange(&self, message: &Opening) -> Result<Answer, Option<Code>> {
        let (mut tx, rx) = self.connection.open_bi().await.unwrap();
        wire::write(&mut tx, message).await.unwrap();
        let _ = tx.finish();
        FileStream { tx, rx, version: wire::FILE_VERSION }.answer().await
    }
}

impl FileStream {
    /// The next message from the node, or the code it reset the stream with.
    async fn answer(&mut self) -> Result<Answer, Option<Code>> {
        match timeout(STEP, wire::read(&mut self.rx)).await.expect("the node answers in time") {
            Ok(m) => Ok(m),
            Err(e) => match e.peer_reset() {
                Some(code) => Err(Some(code)),
                None => panic!("unexpected stream error: {e}"),
            },
        }
    }

    /// Sends chunk `index` of `data` (header frame with the stream version's check, then the raw
    /// bytes); `corrupt` flips a byte of the bytes after the header's check was computed. A write
    /// error (the node stopped the stream) is returned, not a panic.
    async fn chunk(&mut self, data: &[u8], index: usize, corrupt: bool) -> Result<(), quinn::WriteError> {
        let start = index * CHUNK;
        let bytes = &data[start..(start + CHUNK).min(data.len())];
        let (offset, len) = (start as u64, bytes.len() as u32);
        let header = match self.version {
            1 => FilePart::FileChunk(FileChunk { offset, len, sha256: Sha256::digest(bytes).into() }),
            _ => FilePart::FileChunkCrc(FileChunkCrc { offset, len, crc32c: crc32c::crc32c(bytes) }),
        };
        self.tx.write_all(&wire::encode(&header).unwrap()).await?;
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
    async fn end(&mut self, sha256: [u8; 32]) -> Result<Answer, Option<Code>> {
        self.tx.write_all(&wire::encode(&FilePart::FileEnd(FileEnd { sha256 })).unwrap()).await.unwrap();
        let _ = self.tx.finish();
        self.answer().await
    }
}

fn chunks(data: &[u8]) -> usize {
    data.len().div_ceil(CHUNK)
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
                Ok(Answer::FileDone(done)) => assert_eq!(done.sha256, sha(&data), "{name:?}"),
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
// a′. Space reserved for an offer
// ---------------------------------------------------------------------------------------------

/// The node reserves an offered file's space at the offer; a peer that offers 512 MiB, sends one
/// chunk and resets the stream (or one whose stream breaks) holds no more of the disk than it
/// sent, and its offer of the same key still resumes after that chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_abandoned_after_one_chunk_holds_no_more_disk_than_it_sent() {
    use std::os::unix::fs::MetadataExt;
    timeout(WHOLE, async {
        let (rogue, b, _service, _root) = rogue_and_node().await;
        let key = "0199-abandoned";
        let size = 512 * CHUNK as u64;
        let part = b.dir.join(format!("data/partial/rogue/{key}.part"));
        let (mut stream, answer) = rogue.offer(key, "big.bin", size).await;
        assert_eq!(answer, Ok(Answer::FileResume(FileResume { have: 0 })));
        let held = |part: &Path| std::fs::metadata(part).map(|m| m.blocks() * 512).unwrap_or(0);
        assert!(held(&part) >= size, "the offer reserved {} bytes of {size}", held(&part));
        let first = bytes(CHUNK, 3);
        stream.chunk(&first, 0, false).await.unwrap();
        let deadline = Instant::now() + STEP;
        while std::fs::metadata(&part).unwrap().len() < CHUNK as u64 {
            assert!(Instant::now() < deadline, "the first chunk was never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stream.tx.reset(Code::Cancelled.varint());
        drop(stream);
        while held(&part) > 2 * CHUNK as u64 {
            assert!(Instant::now() < deadline, "the reservation stayed: {} bytes held", held(&part));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::metadata(&part).unwrap().len(), CHUNK as u64, "the chunk sent is kept");
        let (_, answer) = rogue.offer(key, "big.bin", size).await;
        assert_eq!(answer, Ok(Answer::FileResume(FileResume { have: CHUNK as u64 })));
    })
    .await
    .expect("the test ends in time");
}

// ---------------------------------------------------------------------------------------------
// b. A corrupted chunk
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_resets_the_stream_and_the_transfer_resumes_after_the_good_ones() {
    corrupted_chunk(wire::FILE_VERSION).await;
}

/// As a sender of the first release does: chunks checked by their SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_of_a_version_1_stream_resets_it_and_the_transfer_resumes_after_the_good_ones() {
    corrupted_chunk(1).await;
}

/// Three good chunks and a corrupted fourth on a file stream of `version`, then the rest on an
/// offer of the same key (version 2, as a sender upgraded in between would).
async fn corrupted_chunk(version: u16) {
    timeout(WHOLE, async {
        let (rogue, b, service, _root) = rogue_and_node().await;
        let key = "0199-corrupt-chunk";
        let data = bytes(6 * CHUNK + 777, 42);
        let (mut stream, have) = rogue.offer_version_expecting_resume(version, key, "data.bin", &data).await;
        assert_eq!(have, 0);
        for index in 0..3 {
            stream.chunk(&data, index, false).await.unwrap();
        }
        // The fourth chunk's bytes do not match the check in its header. The node may stop the
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
            Ok(Answer::FileDone(done)) => assert_eq!(done.sha256, sha(&data)),
            other => panic!("expected FileDone, got {other:?}"),
        }
        let landed = b.dir.join(format!("data/received/rogue/{key}/data.bin"));
        assert_eq!(std::fs::read(&landed).unwrap(), data, "the file on disk is the file sent");
        assert!(!part.exists(), "the partial file became the received one");

        // The verified file is handed to the service with a request that refers to it.
        let file =
            FileRef { field: "doc".into(), name: "data.bin".into(), size: data.len() as u64, sha256: sha(&data) };
        match rogue.exchange(&Opening::Request(request_with(key, file))).await {
            Ok(Answer::Response(r)) => assert_eq!(r.status, 200),
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
            Ok(Answer::Refused(r)) => assert_eq!(r.kind, RefusalKind::BadRequest, "{r:?}"),
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
            let sync = Opening::Request(request_with(key, file.clone()));
            match rogue.exchange(&sync).await {
                Ok(Answer::Refused(r)) => assert_eq!(r.kind, RefusalKind::BadRequest, "{r:?}"),
                other => panic!("expected the sync request to be refused, got {other:?}"),
            }
            let queued = Opening::AsyncRequest(wire::AsyncRequest {
                request: request_with(key, file),
                reply: false,
                expires_at_ms: i64::MAX / 2,
            });
            match rogue.exchange(&queued).await {
                Ok(Answer::Refused(r)) => assert_eq!(r.kind, RefusalKind::BadRequest, "{r:?}"),
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
        assert!(matches!(stream.end(sha(&first)).await, Ok(Answer::FileDone(_))));
        let file =
            FileRef { field: "file".into(), name: "report.pdf".into(), size: first.len() as u64, sha256: sha(&first) };
        match rogue.exchange(&Opening::Request(request_with(key, file))).await {
            Ok(Answer::Response(r)) => assert_eq!(r.status, 200),
            other => panic!("expected a response, got {other:?}"),
        }
        let seen = service.seen();
        let form: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&seen[0].body).unwrap();
        let handed = PathBuf::from(&form["file"]);
        assert_eq!(std::fs::read(&handed).unwrap(), first);

        // The same key again, another file of another size, under the same name.
        let second = bytes(2 * CHUNK + 20, 2);
        let (mut stream, answer) = rogue.offer(key, "report.pdf", second.len() as u64).await;
        if let Ok(Answer::FileResume(FileResume { have })) = answer {
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
        Ok(Answer::FileDone(done)) => assert_eq!(done.sha256, sha(data), "{key:?}"),
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
    if let (mut stream, Ok(Answer::FileResume(FileResume { have }))) = rogue.offer(key, name, data.len() as u64).await {
        stream.rest(data, have).await;
        let _ = stream.end(sha(data)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// c'. Offers left hanging
// ---------------------------------------------------------------------------------------------

/// A peer that opens file offers and then says nothing more (streams left open, or reset) does
/// not keep them counted as moving: `/v1/stats` counts each from its offer, and none once the link
/// has reported nothing of them for 10 s, whatever the peer keeps open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_left_hanging_stop_counting_as_transfers() {
    timeout(WHOLE, async {
        let (rogue, b, _service, _root) = rogue_and_node().await;
        let active = async || b.get("/v1/stats").await.1["data"]["transfers_active"].as_u64().unwrap();
        assert_eq!(active().await, 0);
        let data = bytes(4 * CHUNK, 23);
        let mut hanging = Vec::new();
        for i in 0..20 {
            let (mut stream, have) = rogue.offer_expecting_resume(&format!("hang-{i}"), "x.bin", &data).await;
            assert_eq!(have, 0);
            stream.chunk(&data, 0, false).await.unwrap();
            if i % 2 == 1 {
                let _ = stream.tx.reset(Code::Done.varint());
            }
            hanging.push(stream);
        }
        let last_offer = Instant::now();
        assert_eq!(active().await, 20, "each offer counts from its start");
        while active().await > 0 {
            assert!(last_offer.elapsed() < Duration::from_secs(30), "still {} counted", active().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let quiet = last_offer.elapsed();
        assert!(quiet >= Duration::from_secs(9), "counted while fresh, for {quiet:?} only");
        drop(hanging);
    })
    .await
    .expect("the test ends in time");
}

// ---------------------------------------------------------------------------------------------
// d. The sending node killed mid-file
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_resumes_after_the_sender_is_killed_midway() {
    timeout(WHOLE, async {
        let service = Recorder::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut a = process::Node::create(root.path(), "org-a");
        let mut b = process::Node::create(root.path(), "org-b");
        a.pin(&b);
        b.pin(&a);
        let allow = vec!["org-a".to_owned()];
        ferry::cli::service::add(&b.config, "1", &service.base_url(), &allow).unwrap();
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
            let status = a.status(&id).await.unwrap_or(Value::Null);
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
