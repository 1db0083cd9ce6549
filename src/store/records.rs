//! Read views of the store for the monitoring API: one request, pages of requests, pending
//! approvals, and counts. They run on read-only connections beside the writer (`reader`).

use std::time::Instant;

use super::sql::{params, OptionalExtension, Row, Sql};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{query_row, rfc3339, stored, Callback, Store, StoreError};
use crate::wire;

/// A request's status (`GET /v1/requests/{id}`).
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    /// The request id.
    pub id: String,
    /// `outgoing` or `incoming`.
    pub direction: String,
    /// The peer.
    pub peer: String,
    /// The service id.
    pub service: String,
    /// The HTTP method.
    pub method: String,
    /// The path.
    pub path: String,
    /// Always `async`: synchronous requests are not stored.
    pub mode: &'static str,
    /// Reply mode.
    pub reply: bool,
    /// The conversation label.
    pub conversation: Option<String>,
    /// `waiting`, `doing`, `success` or `failed`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Attempts to send it (outgoing) or to call the service (incoming).
    pub attempts: u32,
    /// The service's response, when known.
    pub response: Option<Value>,
    /// The replies; left out of lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replies: Option<Vec<Value>>,
    /// The file sent with the request: `{name, size, sha256, bytes_done, path, moving,
    /// bytes_per_s}` (`moving`: the file of this node's request is moving now; `bytes_per_s`: its
    /// rate while it moves, once measured).
    pub transfer: Option<Value>,
    /// Callback delivery, for outgoing requests with a callback.
    pub callback: Option<Value>,
}

/// Filters for `GET /v1/requests`.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// `outgoing` or `incoming`.
    pub direction: Option<String>,
    /// A state name.
    pub state: Option<String>,
    /// A peer name.
    pub peer: Option<String>,
    /// A conversation label.
    pub conversation: Option<String>,
    /// A service id.
    pub service: Option<String>,
    /// Text the request id or its idempotency key holds.
    pub text: Option<String>,
    /// At most this many (1..=500).
    pub limit: usize,
    /// Only requests older than this id (the previous page's `next`).
    pub before: Option<String>,
}

/// One page of requests, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The requests, without their replies.
    pub items: Vec<RequestView>,
    /// The `before` for the next page, if there is one.
    pub next: Option<String>,
}

/// An incoming reply-mode request awaiting its reply (`GET /v1/pending`, the inbox).
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    /// The id the service answers with.
    pub callback_id: String,
    /// The requesting peer.
    pub peer: String,
    /// The service id.
    pub service: String,
    /// The HTTP method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The form fields.
    pub form: Map<String, Value>,
    /// RFC 3339.
    pub created_at: String,
}

/// Counts by direction and state (`GET /v1/stats`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Stats {
    /// Outgoing requests by state.
    pub outgoing: Map<String, Value>,
    /// Incoming requests by state.
    pub incoming: Map<String, Value>,
    /// Results not yet delivered to callbacks.
    pub callbacks_pending: u64,
}

/// Stored requests in one direction, with one peer, in one state.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueCount {
    /// `outgoing` or `incoming`.
    pub direction: String,
    /// The peer.
    pub peer: String,
    /// `waiting`, `doing`, `success` or `failed`.
    pub state: String,
    /// How many.
    pub count: i64,
}

/// What the queue metrics show ([`Store::queue_counts`]).
#[derive(Debug, Clone, Default)]
pub struct QueueCounts {
    /// Stored requests by direction, peer and state.
    pub requests: Vec<QueueCount>,
    /// Results waiting to be delivered to callbacks.
    pub callbacks_pending: i64,
}

const COLUMNS: &str = "seq, id, direction, peer, service, method, path, reply, conversation, state, error,
    created_at, updated_at, attempts, response_status, response_headers, response_body, callback_url, callback_method,
    file_name, file_size, file_sha256, file_done, file_path";

/// A request row as the API shows it, before its callback delivery and replies are filled in.
struct Viewed {
    /// The row's seq.
    row: i64,
    /// What the API shows.
    view: RequestView,
    /// Where its results go, if anywhere.
    callback: Option<Callback>,
}

fn view(r: &Row) -> Result<Viewed, StoreError> {
    let response = match r.get::<Option<u16>>(14)? {
        Some(status) => {
            let headers: Vec<(String, String)> =
                r.get::<Option<String>>(15)?.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default();
            let body: Vec<u8> = r.get::<Option<Vec<u8>>>(16)?.unwrap_or_default();
            let response = wire::Response { status, headers, body, replay_of: None };
            let (body, encoding) = response.body_json();
            let mut v = json!({"status": status, "headers": response.headers_json(), "body": body});
            if let Some(e) = encoding {
                v["body_encoding"] = e.into();
            }
            Some(v)
        }
        None => None,
    };
    let callback = match (r.get::<Option<String>>(17)?, r.get::<Option<String>>(18)?) {
        (Some(url), Some(method)) => Some(Callback { url, method }),
        _ => None,
    };
    Ok(Viewed {
        row: r.get(0)?,
        view: RequestView {
            id: r.get(1)?,
            direction: r.get(2)?,
            peer: r.get(3)?,
            service: r.get(4)?,
            method: r.get(5)?,
            path: r.get(6)?,
            mode: "async",
            reply: r.get(7)?,
            conversation: r.get(8)?,
            state: r.get(9)?,
            error: r.get(10)?,
            created_at: super::rfc3339(r.get(11)?),
            updated_at: super::rfc3339(r.get(12)?),
            attempts: r.get(13)?,
            response,
            replies: None,
            transfer: match r.get::<Option<String>>(19)? {
                Some(name) => Some(json!({
                    "name": name,
                    "size": r.get::<Option<i64>>(20)?,
                    "sha256": r.get::<Option<String>>(21)?,
                    "bytes_done": r.get::<i64>(22)?,
                    "path": r.get::<Option<String>>(23)?,
                })),
                None => None,
            },
            callback: None,
        },
        callback,
    })
}

/// The view of a request row with its callback delivery (and, when `with_replies`, its replies)
/// filled in.
/// `view` with its callback's delivery `attempts` (`callback.history`), credentials in the URL
/// masked in their errors as in `callback.url`.
fn with_attempts(mut view: RequestView, url: Option<String>, attempts: Vec<super::CallbackAttempt>) -> RequestView {
    if let (Some(Value::Object(callback)), Some(url)) = (view.callback.as_mut(), url) {
        let shown = without_credentials(&url);
        let history: Vec<_> = attempts
            .into_iter()
            .map(|mut a| {
                a.error = a.error.map(|e| e.replace(&url, &shown));
                a
            })
            .collect();
        callback.insert("history".into(), json!(history));
    }
    view
}

fn complete(t: &Sql, viewed: Viewed, with_replies: bool) -> Result<RequestView, StoreError> {
    let Viewed { row, mut view, callback } = viewed;
    // Credentials in a callback URL stored by an earlier version, and the shown form that masks
    // them wherever an error repeats the URL.
    let masked = callback.as_ref().map(|c| (c.url.clone(), without_credentials(&c.url)));
    if let Some(Callback { url, method }) = callback {
        let (count, delivered, attempts, last_error): (u32, u32, u32, Option<String>) = query_row(
            t,
            "SELECT COUNT(*), CAST(COALESCE(SUM(delivered), 0) AS BIGINT),
                    CAST(COALESCE(SUM(callback_attempts), 0) AS BIGINT),
                    (SELECT callback_error FROM replies WHERE request = ?1 AND callback_error IS NOT NULL
                     ORDER BY seq DESC LIMIT 1)
             FROM replies WHERE request = ?1",
            [row],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let shown = without_credentials(&url);
        let last_error = last_error.map(|e| e.replace(&url, &shown));
        view.callback = Some(json!({
            "url": shown, "method": method, "delivered": count > 0 && delivered == count,
            "attempts": attempts, "last_error": last_error,
        }));
    }
    if with_replies {
        let outgoing = view.direction == "outgoing";
        let replies = t.query(
            "SELECT seq, data, error, \"end\", created_at, delivered, next_send_at IS NULL, file_path, file_name, file_size,
                    file_sha256, callback_attempts, callback_error, callback_at FROM replies
             WHERE request = ?1 ORDER BY seq",
            [row],
            |r| {
                let data: Option<String> = r.get(1)?;
                let data = data.and_then(|d| serde_json::from_str::<Value>(&d).ok()).unwrap_or(Value::Null);
                // On the requesting node `delivered` means delivered to the callback; on the
                // receiving node, acknowledged by the requesting node.
                let delivered: bool = if outgoing { r.get(5)? } else { r.get(6)? };
                let mut reply = json!({
                    "seq": r.get::<u32>(0)?, "data": data, "error": r.get::<Option<String>>(2)?,
                    "file": r.get::<Option<String>>(7)?, "end": r.get::<bool>(3)?, "received_at": rfc3339(r.get(4)?),
                    "delivered": delivered,
                });
                if let Some(name) = r.get::<Option<String>>(8)? {
                    reply["file_info"] = json!({"name": name, "size": r.get::<Option<i64>>(9)?,
                        "sha256": r.get::<Option<String>>(10)?});
                }
                if let Some((url, shown)) = &masked {
                    let last_error = r.get::<Option<String>>(12)?.map(|e| e.replace(url.as_str(), shown));
                    reply["callback"] = json!({
                        "attempts": r.get::<u32>(11)?, "last_error": last_error,
                        "next_attempt_at": r.get::<Option<i64>>(13)?.map(rfc3339),
                    });
                }
                Ok(reply)
            },
        )?;
        view.replies = Some(replies);
    }
    Ok(view)
}

/// A callback URL as the API shows it: credentials (`user:pass@`), which callbacks stored before
/// they were refused may hold, are masked as `***@`.
fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_password(None);
            let _ = u.set_username("***");
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// The request with this id, with its replies; outgoing first if both directions have it.
    pub async fn get(&self, id: &str) -> Result<Option<RequestView>, StoreError> {
        let id = id.to_owned();
        self.read(move |t| {
            let found = query_row(
                t,
                &format!("SELECT {COLUMNS} FROM requests WHERE id = ?1 ORDER BY direction DESC LIMIT 1"),
                [&id],
                view,
            )
            .optional()?;
            let Some(viewed) = found else { return Ok(None) };
            let (row, url) = (viewed.row, viewed.callback.as_ref().map(|c| c.url.clone()));
            let view = complete(t, viewed, true)?;
            // By the row: a lookup by id and direction would scan every outgoing request's entry
            // of the (direction, peer, id) index, which SQLite prefers to the id's own.
            let attempts = if url.is_some() { super::attempts::of(t, row)? } else { Vec::new() };
            Ok(Some(with_attempts(view, url, attempts)))
        })
        .await
        .map(|found| found.map(|view| self.in_motion(view, Instant::now())))
    }

    /// A page of requests, newest first.
    pub async fn list(&self, filter: RequestFilter) -> Result<Page, StoreError> {
        self.read(move |t| {
            let before: i64 = match &filter.before {
                Some(id) => t
                    .query_row("SELECT MIN(seq) FROM requests WHERE id = ?1", [id], |r| r.get::<Option<i64>>(0))?
                    .unwrap_or(0),
                None => i64::MAX,
            };
            let rows = t.query(
                &format!(
                    "SELECT {COLUMNS} FROM requests WHERE seq < ?1
                 AND (CAST(?2 AS TEXT) IS NULL OR direction = ?2) AND (CAST(?3 AS TEXT) IS NULL OR state = ?3)
                 AND (CAST(?4 AS TEXT) IS NULL OR peer = ?4) AND (CAST(?5 AS TEXT) IS NULL OR conversation = ?5)
                 AND (CAST(?7 AS TEXT) IS NULL OR service = ?7)
                 AND (CAST(?8 AS TEXT) IS NULL OR {instr}(id, ?8) > 0 OR {instr}(COALESCE(idempotency_key, ''), ?8) > 0)
                 ORDER BY seq DESC LIMIT ?6",
                    instr = if t.is_postgres() { "strpos" } else { "instr" }
                ),
                params![
                    before,
                    filter.direction,
                    filter.state,
                    filter.peer,
                    filter.conversation,
                    filter.limit as i64 + 1,
                    filter.service,
                    filter.text,
                ],
                view,
            )?;
            let more = rows.len() > filter.limit;
            let items = rows
                .into_iter()
                .take(filter.limit)
                .map(|viewed| complete(t, viewed, false))
                .collect::<Result<Vec<_>, _>>()?;
            let next = if more { items.last().map(|v| v.id.clone()) } else { None };
            Ok(Page { items, next })
        })
        .await
        .map(|page| {
            let now = Instant::now();
            Page { items: page.items.into_iter().map(|view| self.in_motion(view, now)).collect(), next: page.next }
        })
    }

    /// `view` with its transfer's `moving` and `bytes_per_s`: whether the file of this node's
    /// request is moving at `now`, and how fast.
    fn in_motion(&self, mut view: RequestView, now: Instant) -> RequestView {
        let moving = match view.direction.as_str() {
            "outgoing" => self.transfers.own_request(&view.peer, &view.id, now),
            _ => None,
        };
        if let Some(Value::Object(transfer)) = view.transfer.as_mut() {
            transfer.insert("moving".into(), moving.is_some().into());
            transfer.insert("bytes_per_s".into(), moving.and_then(|m| m.bytes_per_s).into());
        }
        view
    }

    /// Incoming reply-mode requests still awaiting a reply, oldest first.
    pub async fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        self.read(move |t| {
            let rows = t.query(
                "SELECT callback_id, peer, wire, created_at, masked_form, record_version FROM requests
                 WHERE direction = 'incoming' AND callback_id IS NOT NULL AND state = 'doing' AND response_status IS NOT NULL
                 ORDER BY seq",
                params![],
                |r| {
                    Ok((
                        r.get::<String>(0)?,
                        r.get::<String>(1)?,
                        r.get::<Vec<u8>>(2)?,
                        r.get::<i64>(3)?,
                        r.get::<Option<String>>(4)?,
                        r.get::<Option<i64>>(5)?,
                    ))
                },
            )?;
            rows.into_iter()
                .map(|(callback_id, peer, blob, created, masked, version)| {
                    let request = stored::decode(version, &blob)?;
                    Ok(Pending {
                        callback_id,
                        peer,
                        service: request.service,
                        method: request.method,
                        path: request.path,
                        form: masked.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_else(|| {
                            request.form.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
                        }),
                        created_at: rfc3339(created),
                    })
                })
                .collect()
        })
        .await
    }

    /// The figures behind the queue metrics: stored requests by direction, peer and state, and
    /// results waiting for callbacks.
    pub async fn queue_counts(&self) -> Result<QueueCounts, StoreError> {
        self.read(move |t| {
            let requests = t.query(
                "SELECT direction, peer, state, COUNT(*) FROM requests GROUP BY direction, peer, state",
                params![],
                |r| Ok(QueueCount { direction: r.get(0)?, peer: r.get(1)?, state: r.get(2)?, count: r.get(3)? }),
            )?;
            let callbacks_pending = query_row(
                t,
                "SELECT COUNT(*) FROM replies WHERE callback_at IS NOT NULL AND delivered = 0",
                params![],
                |r| r.get(0),
            )?;
            Ok(QueueCounts { requests, callbacks_pending })
        })
        .await
    }

    /// How many requests were stored so far, both directions: the seq of the newest (rows let go
    /// of by housekeeping still count).
    pub async fn requests_stored(&self) -> Result<u64, StoreError> {
        self.read(move |t| query_row(t, "SELECT COALESCE(MAX(seq), 0) FROM requests", params![], |r| r.get(0))).await
    }

    /// Counts of requests by direction and state, and undelivered callback results.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        self.read(move |t| {
            let mut stats = Stats::default();
            for map in [&mut stats.outgoing, &mut stats.incoming] {
                for s in ["waiting", "doing", "success", "failed"] {
                    map.insert(s.into(), 0.into());
                }
            }
            let rows =
                t.query("SELECT direction, state, COUNT(*) FROM requests GROUP BY direction, state", params![], |r| {
                    Ok((r.get::<String>(0)?, r.get::<String>(1)?, r.get::<u64>(2)?))
                })?;
            for (direction, state, n) in rows {
                let map = if direction == "outgoing" { &mut stats.outgoing } else { &mut stats.incoming };
                map.insert(state, n.into());
            }
            stats.callbacks_pending = query_row(
                t,
                "SELECT COUNT(*) FROM replies WHERE callback_at IS NOT NULL AND delivered = 0",
                params![],
                |r| r.get(0),
            )?;
            Ok(stats)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::queue::fixtures::new_async;
    use crate::store::{RequestFilter, Store};

    /// A read begun after a write was answered sees it.
    #[tokio::test]
    async fn a_read_sees_every_write_answered_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        for i in 0..50 {
            let id = format!("r{i}");
            store.insert_outgoing(new_async(&id)).await.unwrap();
            assert_eq!(store.get(&id).await.unwrap().map(|v| v.id), Some(id));
            let page = store.list(RequestFilter { limit: 1, ..RequestFilter::default() }).await.unwrap();
            assert_eq!(page.items[0].id, format!("r{i}"));
            assert_eq!(store.stats().await.unwrap().outgoing["waiting"], i + 1);
        }
    }

    /// Read views answer while the writer is busy with a transaction.
    #[tokio::test]
    async fn reads_do_not_queue_behind_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        store.insert_outgoing(new_async("r1")).await.unwrap();
        let (started, busy) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let writing = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .run(move |_, _| {
                        let _ = started.send(());
                        let _ = released.recv();
                        Ok(())
                    })
                    .await
            }
        });
        busy.await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            (store.get("r1").await.unwrap().is_some(), store.stats().await.unwrap().outgoing["waiting"].clone())
        })
        .await;
        release.send(()).unwrap();
        assert_eq!(read.expect("a read waited for the writer"), (true, 1.into()));
        writing.await.unwrap().unwrap();
    }
}
