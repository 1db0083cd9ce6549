//! Connections and streams opened by peers: who they are, and the answer to each message.

use std::sync::Arc;
use std::time::Duration;

use super::{receipts, Link, LinkFailure};
use crate::peer::{Peer, Peers};
use crate::receipt::Binding;
use crate::service::{Caller, Services};
use crate::store::{Admission, FormFile, Store};
use crate::transfer::{self, Folders, ReceiveError};
use crate::wire::{self, Answer, Code, FrameError, Opening, Refusal, RefusalKind};

/// How long a peer may take to send a stream's first frame once it opened the stream.
const FIRST_FRAME_WITHIN: Duration = Duration::from_secs(10);

/// What answering peers needs: the local services and their caller, the store, and where files go.
#[derive(Clone)]
pub(super) struct Inbound {
    pub link: Link,
    pub services: Services,
    pub caller: Arc<dyn Caller>,
    pub store: Store,
    pub folders: Folders,
    /// Files being received now, as `peer\0key`: a second offer of the same file waits its turn.
    pub receiving: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Completes the handshake with `tls`, names the peer by its certificate, and serves its streams.
pub(super) async fn connection(
    peers: Peers,
    inbound: Inbound,
    incoming: quinn::Incoming,
    tls: Arc<quinn::ServerConfig>,
) {
    let remote = incoming.remote_address();
    let handshake = match incoming.accept_with(tls) {
        Ok(connecting) => connecting.await,
        Err(e) => Err(e),
    };
    let connection = match handshake {
        Ok(c) => c,
        Err(e) => return tracing::debug!(%remote, error = %e, "handshake failed"),
    };
    let Some(peer) = identify(&peers, &connection) else {
        connection.close(Code::NotPinned.varint(), b"certificate not pinned");
        return tracing::warn!(%remote, "closed a connection whose certificate is no longer pinned");
    };
    tracing::info!(peer = %peer.name, %remote, rtt_ms = %super::rtt_ms(&connection), "peer connected");
    peer.seen();
    peer.dialed_in();
    inbound.link.heard_ask_for(&peer, &connection);
    // A peer that dials anew may have restarted: a datagram on this node's own connection to it
    // draws a stateless reset at once if that connection is from its previous run, so that it is
    // redialed before a request uses it.
    if let Some(ours) = peer.connection() {
        let _ = ours.send_datagram(bytes::Bytes::from_static(b"?"));
    }
    // The peer is up: whatever waits for it is due now.
    if let Err(e) = inbound.store.peer_is_back(&peer.name).await {
        tracing::error!(error = %e, "cannot reschedule work for a returning peer");
    }
    // Cancelled by a stream whose peer broke the protocol so that the whole connection must go.
    // (Stream tasks do not hold the connection itself: a task that outlived it would keep the
    // endpoint, and its socket, from closing.)
    let broken = tokio_util::sync::CancellationToken::new();
    let member: Option<Arc<str>> = peer.member_of(&connection).map(Into::into);
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let from = (peer.clone(), member.clone());
                    tokio::spawn(stream(from, inbound.clone(), broken.clone(), send, recv));
                }
                Err(e) => return tracing::info!(peer = %peer.name, %remote, reason = %e, "peer disconnected"),
            },
            _ = broken.cancelled() => {
                connection.close(Code::ProtocolViolation.varint(), b"protocol violation");
                return tracing::warn!(peer = %peer.name, "closed the connection of a peer that broke the protocol");
            }
            () = peer.retired() => {
                connection.close(Code::NotPinned.varint(), b"no longer pinned");
                return tracing::info!(peer = %peer.name, "closed the connection of a peer that a reload removed or changed");
            }
        }
    }
}

impl Link {
    /// Notes which of this node's certificates `peer` asked for when it dialed ([`tls::server_name`]):
    /// once it asks for the current one during a rollover, it pins it. Peers hear of a rollover
    /// at each new connection.
    ///
    /// [`tls::server_name`]: crate::tls::server_name
    fn heard_ask_for(&self, peer: &Peer, connection: &quinn::Connection) {
        let asked = connection
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.server_name.as_deref().and_then(crate::tls::pinned_in_server_name));
        let keys = self.inner.keys.load();
        if let Some(asked) = asked.filter(|asked| *asked == keys.current.fingerprint) {
            // Learned from its dial, during this node's rollover: said as when it answers the statement.
            if peer.pins_ours(asked) && keys.previous().is_some() {
                tracing::info!(
                    peer = %peer.name,
                    fingerprint = %asked,
                    "the peer pins this node's new certificate; it is presented to it from now on"
                );
            }
        }
        self.inner.announce.notify_one();
    }
}

/// The pinned peer that presented this connection's client certificate.
fn identify(peers: &Peers, connection: &quinn::Connection) -> Option<Arc<Peer>> {
    peers.by_fingerprint(&crate::tls::presented(connection)?)
}

fn reset(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: Code) {
    let _ = send.reset(code.varint());
    let _ = recv.stop(code.varint());
}

/// Answers one stream: reads its opening message, hands it to the handler for its kind, and
/// sends the answer, or resets the stream with the code the handler gives.
async fn stream(
    (peer, member): (Arc<Peer>, Option<Arc<str>>),
    inbound: Inbound,
    broken: tokio_util::sync::CancellationToken,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let _open = super::runtime::OpenStream::new();
    let opening: Opening = match tokio::time::timeout(FIRST_FRAME_WITHIN, wire::read(&mut recv)).await {
        Err(_) => return reset(&mut send, &mut recv, Code::Stalled),
        Ok(Err(e @ FrameError::Misplaced { .. })) => {
            tracing::warn!(peer = %peer.name, error = %e, "unsupported message");
            return reset(&mut send, &mut recv, e.code());
        }
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer.name, error = %e, "bad frame from peer");
            return reset(&mut send, &mut recv, e.code());
        }
        Ok(Ok(m)) => m,
    };
    if !opening.version_spoken() {
        tracing::warn!(peer = %peer.name, version = ?opening.version(), "peer speaks another protocol version");
        return reset(&mut send, &mut recv, Code::VersionMismatch);
    }
    peer.seen();
    if !matches!(opening, Opening::FileOffer(_)) {
        super::read_end(&mut recv);
    }
    let from = Origin { peer: &peer, member: member.as_deref() };
    let answer = match opening {
        Opening::Request(request) => inbound.request(from, &request).await,
        Opening::AsyncRequest(message) => inbound.async_request(from, message).await,
        Opening::Reply(reply) => inbound.reply(from, reply).await,
        Opening::FileOffer(offer) => inbound.file_offer(from, offer, &mut send, &mut recv).await,
        Opening::Receipt(r) => match inbound.receipt(from, r.leaves.len(), receipts::verify(&peer, &r), r) {
            Some(ack) => Ok(ack),
            None => return broken.cancel(),
        },
        Opening::Countersign(r) => {
            match inbound.receipt(from, r.leaves.len(), receipts::verify_countersign(&peer, &r), r) {
                Some(ack) => Ok(ack),
                None => return broken.cancel(),
            }
        }
        Opening::Checkpoint(checkpoint) => match inbound.checkpoint(from, checkpoint).await {
            Some(answer) => answer,
            None => return broken.cancel(),
        },
        Opening::Rollover(statement) => Ok(inbound.rollover(&peer, statement).await),
    };
    match answer {
        Ok(answer) => match wire::write(&mut send, &answer).await {
            Ok(()) => {
                let _ = send.finish();
            }
            Err(e) => tracing::debug!(peer = %peer.name, error = %e, "could not send the answer"),
        },
        Err(code) => reset(&mut send, &mut recv, code),
    }
}

/// Who opened a stream: the peer, and for a peer whose members have a key each, which member
/// ([`Peer::member_of`]), as its evidence records name it.
#[derive(Clone, Copy)]
struct Origin<'a> {
    peer: &'a Peer,
    member: Option<&'a str>,
}

/// The handlers, one per message that opens a stream. Each returns its answer, or the code to
/// reset the stream with.
impl Inbound {
    /// Answers a synchronous request: admission when its service checks idempotency keys or
    /// duplicates (the request, its key and the answer are then on disk before the answer
    /// leaves), the service call, and the evidence of the exchange. A plain exchange changes no
    /// state: its records join the writer's next commit without holding up the answer.
    /// `Err`: the store failed; nothing was called.
    async fn request(&self, Origin { peer, member }: Origin<'_>, request: &wire::Request) -> Result<Answer, Code> {
        let Inbound { link, services, caller, store, .. } = self;
        let allowed = match services.check_request(&peer.name, request) {
            Ok(allowed) => allowed,
            Err(refusal) => return Ok(Answer::Refused(refusal)),
        };
        let service = allowed.service.clone();
        let file = match received_file(store, &peer.name, &request.id, &request.file).await {
            Ok(file) => file,
            Err(refusal) => return Ok(Answer::Refused(refusal)),
        };
        let payload = wire::payload_sha256(request);
        let checked = request.idempotency_key.is_some() || service.dedupe_window.is_some();
        if checked {
            let admitted = store.admit_sync(&peer.name, member, request, &service, payload).await.map_err(|e| {
                tracing::error!(peer = %peer.name, id = %request.id, error = %e, "cannot record a request");
                Code::Done
            })?;
            match admitted {
                Admission::New | Admission::Known => {}
                Admission::Replay(response) => return Ok(Answer::Response(response)),
                Admission::Refused(refusal) => return Ok(Answer::Refused(refusal)),
            }
        }
        link.sign_receipt(&peer.name, Binding::of_request(request, payload).leaf(0));
        let started = std::time::Instant::now();
        let extra: Vec<_> = file.into_iter().map(|f| (f.field, f.path)).collect();
        let answer = caller.call(&peer.name, request, Some(allowed), &extra).await.map_err(|e| e.refusal);
        let metrics = &link.inner.metrics;
        let label = crate::metrics::ServiceLabel { service: service.id.clone() };
        metrics.service_duration.get_or_create(&label).observe(started.elapsed().as_secs_f64());
        let outcome = match &answer {
            Ok(r) if r.is_success() => "success",
            Ok(_) => "failed",
            Err(_) => "refused",
        };
        metrics.sync_request(&peer.name, "incoming", outcome);
        tracing::debug!(peer = %peer.name, id = %request.id, path = %request.path, elapsed = ?started.elapsed(), "answered");
        let answered = answer.as_ref().map_err(|r| r.message.as_str());
        if checked {
            if let Err(e) = store.sync_settled(&peer.name, member, &request.id, answered).await {
                tracing::error!(peer = %peer.name, id = %request.id, error = %e, "cannot record a service's answer");
            }
        } else {
            store.sync_served(&peer.name, member, request, &service.mask_fields, payload, answered);
        }
        Ok(match answer {
            Ok(response) => Answer::Response(response),
            Err(refusal) => Answer::Refused(refusal),
        })
    }

    /// Takes an asynchronous request: checked against its service and refused here, before it
    /// is stored, so that nothing hostile waits in the store for a call; else persisted (once
    /// per id) and acknowledged. `Err`: the store failed; the peer will send it again.
    async fn async_request(
        &self,
        Origin { peer, member }: Origin<'_>,
        message: wire::AsyncRequest,
    ) -> Result<Answer, Code> {
        let Inbound { link, services, store, .. } = self;
        let id = message.request.id.clone();
        let payload = wire::payload_sha256(&message.request);
        let leaf = Binding::of_request(&message.request, payload).leaf(0);
        let service = match services.check_request(&peer.name, &message.request) {
            Ok(allowed) => allowed.service,
            Err(refusal) => return Ok(Answer::Refused(refusal)),
        };
        let file = match received_file(store, &peer.name, &id, &message.request.file).await {
            Ok(file) => file,
            Err(refusal) => return Ok(Answer::Refused(refusal)),
        };
        match store.insert_incoming(&peer.name, member, message, file.map(|f| f.path), &service, payload).await {
            Ok(Admission::Refused(refusal)) => Ok(Answer::Refused(refusal)),
            Ok(_) => {
                link.sign_receipt(&peer.name, leaf);
                Ok(Answer::Ack(wire::Ack { id, seq: 0 }))
            }
            Err(e) => {
                tracing::error!(peer = %peer.name, %id, error = %e, "cannot persist a request; the peer will resend it");
                Err(Code::Done)
            }
        }
    }

    /// Takes a reply to one of this node's requests: persisted (once per `id/seq`) and
    /// acknowledged. `Err`: the store failed; the peer will send it again.
    async fn reply(&self, Origin { peer, member }: Origin<'_>, reply: wire::Reply) -> Result<Answer, Code> {
        let Inbound { link, store, .. } = self;
        let ack = wire::Ack { id: reply.id.clone(), seq: reply.seq };
        let key = format!("{}/{}", reply.id, reply.seq);
        let payload = wire::payload_sha256(&reply);
        let leaf = Binding::of_reply(&reply, payload).leaf(0);
        let field_problem =
            reply.file.as_ref().and_then(|f| wire::file_field_problem(&f.field, &wire::CALLBACK_FIELDS));
        let file = match field_problem {
            Some(why) => Err(Refusal::new(RefusalKind::BadRequest, format!("the reply's file field {why}"))),
            None => received_file(store, &peer.name, &key, &reply.file).await,
        };
        let file = match file {
            Ok(file) => file,
            Err(refusal) => return Ok(Answer::Refused(refusal)),
        };
        let (seq, error) = (reply.seq, reply.error.clone());
        match store.received_reply(&peer.name, member, reply, file.map(|f| f.path), payload).await {
            Ok(ended) => {
                if let Some(took) = ended {
                    let label = crate::metrics::PeerLabel { peer: peer.name.clone() };
                    link.inner.metrics.async_duration.get_or_create(&label).observe(took.as_secs_f64());
                    // Where an async exchange ends on the requesting node: one line for it.
                    let (id, ms) = (&ack.id, format!("{:.1}", took.as_secs_f64() * 1000.0));
                    match &error {
                        None => {
                            tracing::info!(%id, peer = %peer.name, replies = seq, state = "success", duration_ms = %ms, "exchange")
                        }
                        Some(error) => {
                            tracing::info!(%id, peer = %peer.name, replies = seq, state = "failed", duration_ms = %ms, %error, "exchange")
                        }
                    }
                }
                link.sign_receipt(&peer.name, leaf);
                Ok(Answer::Ack(ack))
            }
            Err(e) => {
                tracing::error!(peer = %peer.name, id = %ack.id, error = %e, "cannot persist a reply; the peer will resend it");
                Err(Code::Done)
            }
        }
    }

    /// Takes a file offered ahead of a request or reply: done at once if it is here already,
    /// refused if another file is, else received on this stream (one stream per file at a time;
    /// another offer of it is reset with [`Code::Done`] and resumes later) and recorded.
    async fn file_offer(
        &self,
        Origin { peer, member }: Origin<'_>,
        offer: wire::FileOffer,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<Answer, Code> {
        let Inbound { link, store, folders, receiving, .. } = self;
        let key = offer.key.clone();
        match store.received_file(&peer.name, &key).await {
            Ok(Some(f)) if f.size == offer.size => return Ok(Answer::FileDone(wire::FileDone { sha256: f.sha256 })),
            // A verified file is never replaced: it may be in a service's hands already.
            Ok(Some(_)) => {
                return Ok(Answer::Refused(Refusal::new(
                    RefusalKind::BadRequest,
                    format!("another file was already received for {key}; it is kept as it was"),
                )))
            }
            _ => {}
        }
        let claim = format!("{}\0{key}", peer.name);
        if !receiving.lock().unwrap().insert(claim.clone()) {
            return Err(Code::Done);
        }
        let _release = Release(receiving.clone(), claim);
        let request_id = key.split('/').next().unwrap_or_default().to_owned();
        let first = std::sync::atomic::AtomicBool::new(true);
        let moved = crate::metrics::Progress::default();
        let progress = |done: u64, total: u64| {
            link.inner.metrics.file_bytes(&peer.name, "received", moved.advance(done));
            let first = first.swap(false, std::sync::atomic::Ordering::Relaxed);
            if first || done == total || done.is_multiple_of(16 * transfer::CHUNK as u64) {
                store.progress_event(&peer.name, &request_id, done, total);
            }
        };
        match transfer::receive(folders, &peer.name, offer, send, recv, progress).await {
            Ok(received) => {
                let sha256 = received.sha256;
                let record = crate::store::ReceivedFile {
                    path: received.path.to_string_lossy().into_owned(),
                    size: received.size,
                    sha256,
                };
                if let Err(e) = store.file_received(&peer.name, member, &key, record).await {
                    tracing::error!(peer = %peer.name, %key, error = %e, "cannot record a received file");
                    return Err(Code::Done);
                }
                Ok(Answer::FileDone(wire::FileDone { sha256 }))
            }
            Err(ReceiveError::Reset(code, why)) => {
                tracing::warn!(peer = %peer.name, %key, %why, "file stream ended early; the sender will resume");
                Err(code)
            }
            Err(ReceiveError::Refuse(refusal)) => {
                tracing::warn!(peer = %peer.name, %key, why = %refusal.message, "refused a file");
                Ok(Answer::Refused(refusal))
            }
        }
    }

    /// Keeps a peer's receipt (`ferry/1`) or countersignature for what this node sent it, covering
    /// `leaves` messages, and acknowledges it; `None` when it did not verify against the peer's
    /// pinned certificate (`verified`), and the connection must close.
    fn receipt(
        &self,
        Origin { peer, member }: Origin<'_>,
        leaves: usize,
        verified: Result<(), LinkFailure>,
        receipt: impl Into<crate::evidence::Receipt>,
    ) -> Option<Answer> {
        if let Err(why) = verified {
            tracing::error!(peer = %peer.name, %why, "a forged or malformed receipt; closing the connection");
            return None;
        }
        self.store.receipt(&peer.name, member, receipt);
        Some(Answer::Ack(wire::Ack { id: String::new(), seq: leaves as u32 }))
    }

    /// Keeps a peer's checkpoint of its chain head and acknowledges it once on disk (`Err`: the
    /// store failed; the peer sends a later one); `None` when it does not verify, and the
    /// connection must close.
    async fn checkpoint(
        &self,
        Origin { peer, member }: Origin<'_>,
        checkpoint: wire::Checkpoint,
    ) -> Option<Result<Answer, Code>> {
        if let Err(why) = receipts::verify_checkpoint(peer, &checkpoint) {
            tracing::error!(peer = %peer.name, %why, "a forged or malformed checkpoint; closing the connection");
            return None;
        }
        Some(match self.store.checkpoint("in", &peer.name, member, checkpoint).await {
            Ok(_) => Ok(Answer::Ack(wire::Ack { id: String::new(), seq: 0 })),
            Err(e) => {
                tracing::error!(peer = %peer.name, error = %e, "cannot record a peer's checkpoint");
                Err(Code::Done)
            }
        })
    }
}

/// Removes `claim` from `set` when dropped.
struct Release(Arc<std::sync::Mutex<std::collections::HashSet<String>>>, String);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.lock().unwrap().remove(&self.1);
    }
}

/// The file a message refers to, which must have arrived whole and verified under `key`, as the
/// service or callback gets it.
async fn received_file(
    store: &Store,
    peer: &str,
    key: &str,
    file: &Option<wire::FileRef>,
) -> Result<Option<FormFile>, Refusal> {
    let Some(want) = file else { return Ok(None) };
    match store.received_file(peer, key).await {
        Ok(Some(got)) if got.sha256 == want.sha256 && got.size == want.size => {
            Ok(Some(FormFile { field: want.field.clone(), path: got.path }))
        }
        Ok(_) => Err(Refusal::new(
            RefusalKind::BadRequest,
            format!("the file `{}` for {key} has not arrived whole; send it first", want.name),
        )),
        Err(e) => Err(Refusal::new(RefusalKind::Internal, format!("the peer's store failed: {e}"))),
    }
}
