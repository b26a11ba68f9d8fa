//! `GET /v1/jobs/{id}/events`: the job's event stream, as SSE or as JSON
//! pages.
//!
//! Zero loss, no duplicates: the live subscription is taken *before* the
//! backlog is read from the database, every event with an id at or below
//! the last one sent is dropped, and when the broadcast channel reports that
//! this subscriber lagged (or a live event arrives beyond the next expected
//! id), the gap is read back from the database. Ids are gap-free per job,
//! so "next expected id" is always `last + 1`.
//!
//! A client resumes with `Last-Event-ID` (what browsers' `EventSource` sends
//! on reconnect) or `?after=N`. Heartbeat comments keep proxies from closing
//! an idle stream. The stream closes after an `end` event, or at once when
//! the job is already finished and the backlog is drained.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cz_state::{JobEvent, JobId, JobStatus};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;

use super::jobs::{load_job, parse_job_id};
use super::views::{ErrorBody, EventPage, EventView, ValidationErrors};
use super::{ApiError, ApiState, Caller, Query};

/// Events read from the database per query.
const PAGE: i64 = 1000;
/// Events buffered between the reader task and a slow HTTP client. Small:
/// the database, not memory, is the buffer (a full channel just pauses the
/// reader).
const SSE_BUFFER: usize = 64;

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Only events with an id greater than this.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// `json` for one page, `sse` (the default) for the stream.
    #[param(pattern = "^(json|sse)$")]
    pub format: Option<String>,
    /// Page size for the JSON form (1 to 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

fn to_sse(e: &JobEvent) -> Event {
    // Rendered once per event, shared by every subscriber of a live event.
    let data = e
        .rendered
        .get_or_init(|| serde_json::to_string(&EventView::from(e)).expect("event serializes"));
    Event::default().id(e.id.to_string()).event(e.kind.clone()).data(&*data)
}

/// Stream a job's events (SSE), or one page of them with `?format=json`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "Job id"),
        ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]{1,18}$", description = "Resume after this event id"),
        EventsQuery),
    responses(
        (status = 200, description = "`text/event-stream`: `id:` event id, `event:` kind, `data:` the event as JSON; or, with `?format=json` (or `Accept: application/json`), one page",
            content((EventPage = "application/json"), (super::views::SseFrame = "text/event-stream"))),
        (status = 404, body = ErrorBody),
        (status = 422, body = ValidationErrors, description = "A malformed query or Last-Event-ID")),
    security(("bearer" = [])))]
pub async fn events(
    State(st): State<ApiState>,
    _caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&id)?;
    load_job(&st, id).await?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => {
            Some(v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()).ok_or_else(|| {
                ApiError::invalid("Last-Event-ID", "must be an event id (integer)")
            })?)
        }
    };
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid("after", "must be an event id (0 or more)"));
    }
    if q.limit.is_some_and(|l| !(1..=PAGE).contains(&l)) {
        return Err(ApiError::invalid("limit", format!("must be between 1 and {PAGE}")));
    }
    let after = last_event_id.or(q.after).unwrap_or(0).max(0);
    let explicit = match q.format.as_deref() {
        None => None,
        Some("json") => Some(true),
        Some("sse") => Some(false),
        Some(_) => return Err(ApiError::invalid("format", "must be `json` or `sse`")),
    };
    let wants_json = explicit.unwrap_or_else(|| {
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json") && !a.contains("text/event-stream"))
    });
    if wants_json {
        let limit = q.limit.unwrap_or(PAGE);
        let evs = st
            .store
            .events_after(id, after, limit)
            .await
            .map_err(ApiError::store("read events"))?;
        let next_after = evs.last().map_or(after, |e| e.id);
        let page = EventPage { events: evs.iter().map(EventView::from).collect(), next_after };
        return Ok(Json(page).into_response());
    }
    // Subscribe before reading anything (see the module doc).
    let live = st.store.subscribe(id);
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(SSE_BUFFER);
    let open = st.metrics.sse_opened();
    let pumped = st.clone();
    tokio::spawn(async move {
        pump(pumped, id, after, live, tx).await;
        drop(open);
    });
    let stream = ReceiverStream::new(rx);
    let keep_alive = KeepAlive::new()
        .interval(Duration::from_secs(st.config.heartbeat_secs.max(1)))
        .text("heartbeat");
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}

enum Sent {
    /// Keep going; the last id sent.
    More(i64),
    /// The terminal event went out, or the client left.
    Done,
}

/// Sends every stored event after `last`, page by page.
async fn drain(
    st: &ApiState,
    job: JobId,
    mut last: i64,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<Sent, cz_state::StoreError> {
    loop {
        let page = st.store.events_after(job, last, PAGE).await?;
        let n = page.len();
        for e in &page {
            if e.id <= last {
                continue;
            }
            if tx.send(Ok(to_sse(e))).await.is_err() {
                return Ok(Sent::Done);
            }
            last = e.id;
            if e.kind == "end" {
                return Ok(Sent::Done);
            }
        }
        if (n as i64) < PAGE {
            return Ok(Sent::More(last));
        }
    }
}

/// The per-connection task: backlog, then live events with gap repair.
async fn pump(
    st: ApiState,
    job: JobId,
    after: i64,
    mut live: tokio::sync::broadcast::Receiver<std::sync::Arc<JobEvent>>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let fail = |e: cz_state::StoreError| {
        tracing::error!(job_id = %job, error = &e as &dyn std::error::Error, "Event stream read failed; closing the stream.");
    };
    let mut last = match drain(&st, job, after, &tx).await {
        Ok(Sent::More(l)) => l,
        Ok(Sent::Done) => return,
        Err(e) => return fail(e),
    };
    // A finished job whose backlog is drained has nothing more to say
    // (the client resumed after its `end`).
    match st.store.get_job(job).await {
        Ok(Some(j))
            if matches!(
                j.status,
                JobStatus::Succeeded
                    | JobStatus::Cancelled
                    | JobStatus::Abandoned
                    | JobStatus::Failed
            ) =>
        {
            // Re-drain once: events committed between the drain and the read.
            let _ = drain(&st, job, last, &tx).await;
            return;
        }
        Ok(_) => {}
        Err(e) => return fail(e),
    }
    loop {
        let received = tokio::select! {
            r = live.recv() => r,
            _ = tx.closed() => return,
        };
        match received {
            Ok(e) if e.id <= last => continue,
            Ok(e) if e.id == last + 1 => {
                if tx.send(Ok(to_sse(&e))).await.is_err() {
                    return;
                }
                last = e.id;
                if e.kind == "end" {
                    return;
                }
            }
            // A gap (live ran ahead of what we sent) or a lag: the database
            // has everything.
            Ok(_) | Err(RecvError::Lagged(_)) => match drain(&st, job, last, &tx).await {
                Ok(Sent::More(l)) => last = l,
                Ok(Sent::Done) => return,
                Err(e) => return fail(e),
            },
            Err(RecvError::Closed) => return,
        }
    }
}
