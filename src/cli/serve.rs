//! `perceptio serve`: the model loaded once behind a local HTTP API. Each answer is exactly the
//! object the CLI's `--json` prints for the same photo and request (the same functions make it).
//!
//! One worker thread owns the model; requests reach it through a bounded queue (429 when full).
//! The worker takes every queued request at once and serves them as a group: each distinct photo
//! of the group is encoded once (InternViT features here, SAM2 features in SAM2's own cache), then
//! the requests run one after another through the LLM and SAM2's decoder. HTTP runs on tokio;
//! the model never runs on its threads.

use super::ask::{ask_json, ask_options, check_question, Context, DEFAULT_SEED};
use super::batch::VisionCache;
use super::depth::{depth_json, depth_options, depth_prompt, DepthJob};
use super::runtime::RuntimeArgs;
use super::segment::{check_expressions, expression_json, segment_options, ExpressionJob};
use crate::error::{Error, Result};
use crate::models::internvl::chat::Vision;
use crate::models::perceptio::{Grounder, LoadOptions};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use candle_core::{DType, Device};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;
use tokio::sync::oneshot;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Hub repo (`org/name[@rev]`) or local directory of the model (Sa2VA-style for /v1/segment,
    /// with a `perceptio.depth` block for /v1/depth; any InternVL2.5 / Sa2VA model for /v1/ask).
    #[arg(long, default_value = "ByteDance/Sa2VA-1B")]
    pub model: String,
    /// Address to listen on (keep it on loopback unless a proxy in front authenticates).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Allow requests to name a photo by `"image_path"` inside DIR (relative paths are relative
    /// to DIR; nothing outside it, through `..` or symlinks, is ever opened). Without it, only
    /// base64 `"image"` bytes are accepted.
    #[arg(long, value_name = "DIR")]
    pub allow_dir: Option<PathBuf>,
    /// Requests that may wait for the model; one more is answered 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Largest request body in bytes (413 above it); also the largest `image_path` file.
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 20)]
    pub max_body: usize,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

/// An HTTP error: its status and the message of the `{"error": ...}` body.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl From<Error> for ApiError {
    /// Usage and input errors are the client's (400); I/O and model failures the server's (500).
    fn from(e: Error) -> Self {
        let status = match e {
            Error::Usage(_) | Error::Input { .. } => StatusCode::BAD_REQUEST,
            Error::Io { .. } | Error::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.0, &json!({"error": self.1}))
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        format!("{v}\n"),
    )
        .into_response()
}

/// What a request asks of the model.
enum Task {
    Segment { expressions: Vec<String>, force_seg: bool },
    Ask { question: String, max_new_tokens: usize },
    Depth { force_depth: bool },
}

/// A decoded photo, keyed by the sha256 of its file bytes.
struct Photo {
    key: [u8; 32],
    img: image::RgbImage,
    /// `"image"` in the answer: the `image_path` as given, `-` for bytes (as the CLI on stdin).
    name: String,
}

/// The answer to one request and how many requests were served in its group.
type Reply = std::result::Result<(Value, usize), ApiError>;

struct Job {
    task: Task,
    photo: Photo,
    reply: oneshot::Sender<Reply>,
    /// Its place in the queue, given back when the worker takes the job.
    slot: Option<Slot>,
}

/// Counters shared by the handlers, the worker and /health.
struct Load {
    waiting: AtomicUsize,
    in_flight: AtomicUsize,
    served: AtomicU64,
    capacity: usize,
}

/// A reserved place in the bounded queue; dropping it (job taken, request failed or the client
/// gone) frees the place.
struct Slot(Arc<Load>);

impl Load {
    fn reserve(self: &Arc<Self>) -> Option<Slot> {
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the handlers share.
struct App {
    jobs: mpsc::Sender<Job>,
    load: Arc<Load>,
    /// The canonical `--allow-dir`.
    allow_dir: Option<PathBuf>,
    max_body: usize,
    max_new_tokens: usize,
    health: Value,
    can_segment: bool,
    /// Why /v1/depth cannot be served, when it cannot.
    no_depth: Option<String>,
}

/// The model and everything the worker needs to answer like the CLI.
struct Worker {
    g: Grounder,
    dir: PathBuf,
    device: Device,
    dtype: DType,
    max_tiles: usize,
    max_new_tokens: usize,
    depth_prompt: Option<String>,
    visions: VisionCache<[u8; 32]>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    if a.queue == 0 {
        return Err(Error::Usage("--queue must be at least 1".into()));
    }
    let allow_dir = match &a.allow_dir {
        Some(d) => {
            let c = std::fs::canonicalize(d).map_err(|e| Error::io(d, e))?;
            if !c.is_dir() {
                return Err(Error::Usage(format!("--allow-dir {}: not a directory", d.display())));
            }
            Some(c)
        }
        None => None,
    };
    // Bind first, so a taken port fails before the model is loaded.
    let listener = std::net::TcpListener::bind((a.host.as_str(), a.port))
        .map_err(|e| Error::io(format!("{}:{}", a.host, a.port), e))?;
    let addr = listener.local_addr().map_err(|e| Error::io("<listener>", e))?;
    let _trace = a.rt.start_trace()?;
    let (device, dtype) = a.rt.device_dtype()?;
    let t = Instant::now();
    let (ck, lo) = a.rt.open_model(&a.model, &device, dtype)?;
    let dir = ck.dir.clone();
    let g = Grounder::load(
        &ck,
        &LoadOptions {
            require_grounding: false,
            ..lo
        },
    )?;
    drop(ck);
    let load_s = t.elapsed().as_secs_f64();
    let max_tiles = a.rt.tiles(&device, g.chat.default_max_tiles());
    let depth = depth_prompt(&g, &dir);
    let can_segment = g.sam2.is_some();
    let dtype_name = format!("{dtype:?}").to_lowercase();
    let health = json!({
        "status": "ok", "model": dir, "device": format!("{device:?}"), "dtype": dtype_name,
        "max_tiles": max_tiles, "max_new_tokens": a.rt.max_new_tokens, "load_s": load_s,
        "endpoints": {"segment": can_segment, "ask": true, "depth": depth.is_ok()},
        "queue_capacity": a.queue, "max_body": a.max_body, "image_path": allow_dir.is_some(),
    });
    let load = Arc::new(Load {
        waiting: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        served: AtomicU64::new(0),
        capacity: a.queue,
    });
    let (tx, rx) = mpsc::channel::<Job>();
    let worker = Worker {
        g,
        dir: dir.clone(),
        device,
        dtype,
        max_tiles,
        max_new_tokens: a.rt.max_new_tokens,
        depth_prompt: depth.as_ref().ok().cloned(),
        visions: VisionCache::default(),
    };
    let wl = load.clone();
    let worker = std::thread::Builder::new()
        .name("perceptio-model".into())
        .spawn(move || crate::util::on_compute_pool(|| worker.run(rx, &wl)))
        .map_err(|e| Error::io("<worker thread>", e))?;
    let app = Arc::new(App {
        jobs: tx,
        load,
        allow_dir,
        max_body: a.max_body,
        max_new_tokens: a.rt.max_new_tokens,
        health,
        can_segment,
        no_depth: depth.err().map(|e| e.to_string()),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("<tokio runtime>", e))?;
    eprintln!(
        "perceptio: {} loaded in {load_s:.1} s ({device:?}, {dtype_name}); listening on http://{addr}",
        dir.display(),
        device = app.health["device"].as_str().unwrap_or_default()
    );
    rt.block_on(serve(listener, app))?;
    // The router and its job sender are gone: the worker finishes what it holds and stops.
    let _ = worker.join();
    eprintln!("perceptio: stopped");
    Ok(())
}

/// Serve until SIGTERM or Ctrl-C, then finish the requests in flight.
async fn serve(listener: std::net::TcpListener, app: Arc<App>) -> Result<()> {
    listener.set_nonblocking(true).map_err(|e| Error::io("<listener>", e))?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| Error::io("<listener>", e))?;
    let max_body = app.max_body;
    let router = Router::new()
        .route("/health", get(health))
        .route("/v1/segment", post(segment))
        .route("/v1/ask", post(ask))
        .route("/v1/depth", post(depth))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint (see GET /health)".into()) })
        .method_not_allowed_fallback(|| async { ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into()) })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(log))
        .with_state(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Error::io("<server>", e))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!("perceptio: shutting down: no new connections; finishing the requests in flight");
}

/// One stderr line per request: method, path, status, milliseconds.
async fn log(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let t = Instant::now();
    let r = next.run(req).await;
    eprintln!(
        "perceptio: {method} {path} {} {:.1} ms",
        r.status().as_u16(),
        t.elapsed().as_secs_f64() * 1e3
    );
    r
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let mut v = app.health.clone();
    v["queue"] = json!(app.load.waiting.load(Ordering::SeqCst));
    v["in_flight"] = json!(app.load.in_flight.load(Ordering::SeqCst));
    v["served"] = json!(app.load.served.load(Ordering::SeqCst));
    json_response(StatusCode::OK, &v)
}

/// The photo of a request: base64 `image` or, under --allow-dir, `image_path`.
struct ImageRef {
    image: Option<String>,
    image_path: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentRequest {
    image: Option<String>,
    image_path: Option<String>,
    expressions: Vec<String>,
    #[serde(default)]
    force_seg: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AskRequest {
    image: Option<String>,
    image_path: Option<String>,
    question: String,
    max_new_tokens: Option<usize>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DepthRequest {
    image: Option<String>,
    image_path: Option<String>,
    /// As `depth --force-depth`: start the reply with the depth start marker.
    #[serde(default)]
    force_depth: bool,
}

/// The body as a request: 413 over the limit, 400 with serde's message when it is not one.
fn parse<T: serde::de::DeserializeOwned>(
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<T, ApiError> {
    let body = body.map_err(|e| {
        let s = e.status();
        let msg = if s == StatusCode::PAYLOAD_TOO_LARGE {
            "request body over the server's --max-body limit".to_string()
        } else {
            format!("could not read the request body: {e}")
        };
        ApiError(s, msg)
    })?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("the body must be a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("bad request: {e}")))
}

async fn segment(State(app): State<Arc<App>>, body: std::result::Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let q: SegmentRequest = parse(body)?;
        if !app.can_segment {
            return Err(ApiError::bad(
                "this model has no [SEG] grounding (text_hidden_fcs + SAM2): /v1/segment is not available",
            ));
        }
        if q.expressions.is_empty() {
            return Err(ApiError::bad(
                "`expressions` is empty: give at least one referring expression",
            ));
        }
        check_expressions(&q.expressions)?;
        let task = Task::Segment {
            expressions: q.expressions,
            force_seg: q.force_seg,
        };
        submit(
            &app,
            ImageRef {
                image: q.image,
                image_path: q.image_path,
            },
            task,
        )
        .await
    };
    reply(r.await)
}

async fn ask(State(app): State<Arc<App>>, body: std::result::Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let q: AskRequest = parse(body)?;
        check_question(&q.question)?;
        let max_new_tokens = q.max_new_tokens.unwrap_or(app.max_new_tokens);
        if max_new_tokens == 0 || max_new_tokens > app.max_new_tokens {
            return Err(ApiError::bad(format!(
                "max_new_tokens must be between 1 and the server's --max-new-tokens ({})",
                app.max_new_tokens
            )));
        }
        let task = Task::Ask {
            question: q.question,
            max_new_tokens,
        };
        submit(
            &app,
            ImageRef {
                image: q.image,
                image_path: q.image_path,
            },
            task,
        )
        .await
    };
    reply(r.await)
}

async fn depth(State(app): State<Arc<App>>, body: std::result::Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let q: DepthRequest = parse(body)?;
        if let Some(why) = &app.no_depth {
            return Err(ApiError::bad(format!("/v1/depth is not available: {why}")));
        }
        let task = Task::Depth {
            force_depth: q.force_depth,
        };
        submit(
            &app,
            ImageRef {
                image: q.image,
                image_path: q.image_path,
            },
            task,
        )
        .await
    };
    reply(r.await)
}

fn reply(r: Reply) -> Response {
    match r {
        Ok((v, group)) => {
            let mut resp = json_response(StatusCode::OK, &v);
            resp.headers_mut().insert("x-perceptio-batch", HeaderValue::from(group));
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// Take a place in the queue (429 when full), decode the photo off the async threads, hand the
/// job to the model worker and wait for its answer.
async fn submit(app: &Arc<App>, image: ImageRef, task: Task) -> Reply {
    let slot = app.load.reserve().ok_or_else(|| {
        ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the queue is full ({} requests waiting); retry later",
                app.load.capacity
            ),
        )
    })?;
    let (allow, max_body) = (app.allow_dir.clone(), app.max_body);
    let photo = tokio::task::spawn_blocking(move || load_photo(image, allow.as_deref(), max_body))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("decoding the image failed: {e}"),
            )
        })??;
    let (tx, rx) = oneshot::channel();
    let job = Job {
        task,
        photo,
        reply: tx,
        slot: Some(slot),
    };
    app.jobs
        .send(job)
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "the model worker has stopped".into()))?;
    rx.await.map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model worker dropped the request".into(),
        )
    })?
}

/// The photo's bytes (base64, or a file under --allow-dir), hashed and decoded with the CLI's
/// size and decompression-bomb checks.
fn load_photo(image: ImageRef, allow: Option<&Path>, max_body: usize) -> std::result::Result<Photo, ApiError> {
    let (bytes, name) = match (image.image, image.image_path) {
        (Some(_), Some(_)) => return Err(ApiError::bad("give either `image` or `image_path`, not both")),
        (None, None) => return Err(ApiError::bad("missing field `image` (the photo's bytes in base64)")),
        (Some(b64), None) => (decode_base64(&b64)?, "-".to_string()),
        (None, Some(p)) => {
            let root = allow.ok_or_else(|| {
                ApiError(
                    StatusCode::FORBIDDEN,
                    "`image_path` is not allowed: this server was started without --allow-dir; send the bytes as base64 `image`".into(),
                )
            })?;
            let path = resolve_allowed(root, &p)?;
            (read_capped(&path, max_body)?, p)
        }
    };
    let key: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes).into()
    };
    let label = if name == "-" { "image" } else { name.as_str() };
    let img = crate::preprocess::image_io::decode_rgb_bytes(&bytes, Path::new(label))
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok(Photo { key, img, name })
}

/// Standard base64 (a `data:...;base64,` prefix and whitespace allowed).
fn decode_base64(s: &str) -> std::result::Result<Vec<u8>, ApiError> {
    use base64::Engine;
    let s = match s.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, d)| d).unwrap_or(rest),
        None => s,
    };
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if clean.is_empty() {
        return Err(ApiError::bad("`image` is empty"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .map_err(|e| ApiError::bad(format!("`image` is not valid base64: {e}")))
}

/// `p` (relative to `root`, or absolute) as a real file inside the canonical `root`: 403 when it
/// leaves `root` by `..` or through a symlink, 404 when missing, 400 when not a regular file.
fn resolve_allowed(root: &Path, p: &str) -> std::result::Result<PathBuf, ApiError> {
    let forbidden = || {
        ApiError(
            StatusCode::FORBIDDEN,
            format!("image_path {p:?} is outside the allowed directory"),
        )
    };
    let joined = root.join(p);
    let mut lexical = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    if !lexical.starts_with(root) {
        return Err(forbidden());
    }
    let real = std::fs::canonicalize(&joined).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ApiError(
            StatusCode::NOT_FOUND,
            format!("image_path {p:?}: no such file in the allowed directory"),
        ),
        _ => ApiError(StatusCode::FORBIDDEN, format!("image_path {p:?}: {e}")),
    })?;
    if !real.starts_with(root) {
        return Err(forbidden());
    }
    if !real.is_file() {
        return Err(ApiError::bad(format!("image_path {p:?} is not a regular file")));
    }
    Ok(real)
}

/// Read at most `max` bytes of `path` (413 when the file is larger).
fn read_capped(path: &Path, max: usize) -> std::result::Result<Vec<u8>, ApiError> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).map_err(|e| ApiError(StatusCode::FORBIDDEN, format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", path.display())))?;
    if bytes.len() > max {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the file is over the server's --max-body limit ({max} bytes)"),
        ));
    }
    Ok(bytes)
}

impl Worker {
    /// Serve groups until every job sender is gone: take all waiting jobs at once, order them so
    /// the requests of one photo run together, encode each photo once, answer each request.
    fn run(mut self, rx: mpsc::Receiver<Job>, load: &Load) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter());
            let n = group.len();
            load.in_flight.store(n, Ordering::SeqCst);
            // Taken: their places in the queue are free again.
            let mut group: Vec<(usize, Job)> = group
                .into_iter()
                .map(|mut j| {
                    j.slot = None;
                    (0, j)
                })
                .collect();
            for i in 0..n {
                let key = group[i].1.photo.key;
                group[i].0 = group.iter().position(|(_, j)| j.photo.key == key).unwrap_or(i);
            }
            group.sort_by_key(|(first_seen, _)| *first_seen);
            for (_, job) in group {
                let r = (!job.reply.is_closed()).then(|| {
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.answer(&job.task, job.photo)));
                    match r {
                        Ok(r) => r.map(|v| (v, n)),
                        Err(p) => Err(ApiError(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("the model failed on this request: {}", panic_message(&p)),
                        )),
                    }
                });
                // Counted before the reply goes out, so a client that reads /health after its
                // answer always sees its request served.
                load.in_flight.fetch_sub(1, Ordering::SeqCst);
                load.served.fetch_add(1, Ordering::SeqCst);
                if let Some(r) = r {
                    let _ = job.reply.send(r);
                }
            }
        }
    }

    /// One request's answer: the CLI's `--json` object (an array of them for the expressions
    /// of a segment request), with no files written and `load_s` 0 (the model was loaded at start).
    fn answer(&mut self, task: &Task, photo: Photo) -> std::result::Result<Value, ApiError> {
        let Photo { key, img, name } = photo;
        let max_tiles = self.max_tiles;
        let g = &self.g;
        let e = self
            .visions
            .get_or_load(key, || Ok(img), |img| g.vision(img, max_tiles))?;
        let (img, vision): (&image::RgbImage, &Vision) = (&e.0, &e.1);
        match task {
            Task::Segment { expressions, force_seg } => {
                let opts = segment_options(max_tiles, *force_seg, self.max_new_tokens);
                let mut out = Vec::with_capacity(expressions.len());
                for expr in expressions {
                    let job = ExpressionJob {
                        expression: expr,
                        opts: &opts,
                        model_dir: &self.dir,
                        image: &name,
                        load_s: 0.0,
                    };
                    out.push(expression_json(&mut self.g, img, vision, &job, |_| Ok(json!({})))?.0);
                }
                Ok(Value::Array(out))
            }
            Task::Ask {
                question,
                max_new_tokens,
            } => {
                let ro = ask_options(*max_new_tokens, 0.0, None, DEFAULT_SEED, true);
                let c = Context {
                    dir: &self.dir,
                    device: &self.device,
                    dtype: self.dtype,
                    load_s: 0.0,
                };
                Ok(ask_json(&mut self.g, img, vision, question, &ro, |_| {}, None, &c)?)
            }
            Task::Depth { force_depth } => {
                let prompt = self
                    .depth_prompt
                    .as_deref()
                    .ok_or_else(|| ApiError::bad("this model has no depth tokens"))?;
                let opts = depth_options(self.max_new_tokens, true, *force_depth);
                let job = DepthJob {
                    prompt,
                    opts: &opts,
                    model_dir: &self.dir,
                    image: &name,
                    load_s: 0.0,
                };
                Ok(depth_json(&mut self.g, img, vision, &job, |_| Ok(json!({})))?.0)
            }
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_allowed_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.png"), b"x").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.png"), b"x").unwrap();
        std::fs::create_dir(outside.path().join("dir")).unwrap();
        assert_eq!(resolve_allowed(&root, "sub/a.png").unwrap(), root.join("sub/a.png"));
        assert_eq!(
            resolve_allowed(&root, "sub/../sub/./a.png").unwrap(),
            root.join("sub/a.png")
        );
        let abs = root.join("sub/a.png");
        assert!(resolve_allowed(&root, abs.to_str().unwrap()).is_ok());
        let status = |p: &str| resolve_allowed(&root, p).unwrap_err().0;
        assert_eq!(status("../x.png"), StatusCode::FORBIDDEN);
        assert_eq!(status("sub/../../x.png"), StatusCode::FORBIDDEN);
        assert_eq!(
            status(outside.path().join("secret.png").to_str().unwrap()),
            StatusCode::FORBIDDEN
        );
        assert_eq!(status("/etc/passwd"), StatusCode::FORBIDDEN);
        assert_eq!(status("sub/missing.png"), StatusCode::NOT_FOUND);
        assert_eq!(status("sub"), StatusCode::BAD_REQUEST);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path().join("secret.png"), root.join("link.png")).unwrap();
            std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
            std::os::unix::fs::symlink(outside.path().join("dir"), root.join("outdir")).unwrap();
            assert_eq!(status("link.png"), StatusCode::FORBIDDEN);
            assert_eq!(status("out/secret.png"), StatusCode::FORBIDDEN);
            // `..` after a symlinked directory is resolved by the file system (to
            // outside/secret.png), not lexically (to root/secret.png).
            assert_eq!(status("outdir/../secret.png"), StatusCode::FORBIDDEN);
            std::os::unix::fs::symlink(root.join("sub/a.png"), root.join("inner.png")).unwrap();
            assert_eq!(resolve_allowed(&root, "inner.png").unwrap(), root.join("sub/a.png"));
        }
    }

    #[test]
    fn base64_is_checked() {
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("data:image/png;base64,aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aG\nk=").unwrap(), b"hi");
        assert!(decode_base64("!!!").unwrap_err().1.contains("base64"));
        assert!(decode_base64("").unwrap_err().1.contains("empty"));
    }

    #[test]
    fn the_queue_is_bounded() {
        let l = Arc::new(Load {
            waiting: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            capacity: 2,
        });
        let a = l.reserve().unwrap();
        let _b = l.reserve().unwrap();
        assert!(l.reserve().is_none());
        drop(a);
        assert!(l.reserve().is_some());
        assert_eq!(l.waiting.load(Ordering::SeqCst), 1);
    }
}
