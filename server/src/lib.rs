//! `griffon serve`: every task of the `griffon` binary over HTTP, and a web page that uses it.
//!
//! - `GET /`: the page (`page.html`): pick an image, a task and its target (categories, an
//!   expression, phrases, a box dragged on the image, an exemplar crop, a prompt), see the boxes
//!   drawn on the image and the answer.
//! - `GET /v1/model`: which model answers (folder and load options, template, input sizes).
//! - `POST /v1/tasks`: one request as JSON ([`TaskBody`]), images as base64 (a `data:` URL is
//!   accepted too); the answer is the JSON of `griffon detect --json` and the other verbs
//!   (`TaskOutput`: image size, detections with pixel and normalised boxes and scores, the text,
//!   dropped pieces, the count) plus `elapsed_ms`.
//!
//! Bad input answers 400 with `{"error": "..."}` naming the field at fault (malformed JSON, an
//! unknown or missing field, a field the task does not use, undecodable base64, an unreadable
//! image, a box outside the image, sampling settings out of range, more new tokens than the
//! limit); an unknown path 404, a wrong method 405, a task body without Content-Length 411, a
//! body over the limit 413, a client too slow 408, a full server 503, a fault of the model
//! rather than the request (non-finite logits, say) 500. Task requests are answered one at a
//! time, in arrival order (one model, one set of weights in memory), a queued one whose client
//! has left skipped; the transport is [`Listener`].
//!
//! Images are decoded by the same code as the CLI's: each upload is written to a per-request
//! temporary folder under its field's name and the request runs as the CLI's would
//! (`griffon_core::Request`, "one API for the CLI and the server"); the folder is removed after
//! the answer.

use base64::Engine;
use griffon_core::{Exemplar, PixelBox, Request, Task, Template};
use griffon_model::generate::SamplingOptions;
use griffon_model::griffon::Griffon;
use griffon_model::tasks::RunOptions;
use serde::Deserialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The web page served at `/`.
pub const PAGE: &str = include_str!("page.html");

/// Request bodies above this many bytes are refused (413) unless [`Service::body_limit`] says
/// otherwise: room for a few base64 images of 1022 px and more.
pub const DEFAULT_BODY_LIMIT: usize = 64 << 20;

/// Requests may ask for at most this many new tokens unless [`Service::max_new_tokens_limit`]
/// says otherwise: one request cannot hold the model (and every request queued behind it) for
/// an unbounded decode. The CLI's default answer budget (512) fits well inside it.
pub const DEFAULT_MAX_NEW_TOKENS_LIMIT: usize = 4096;

/// One request of `POST /v1/tasks`. Unknown fields are refused (a misspelt field would
/// otherwise be ignored silently); fields another task uses are refused too.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    /// detect, ground, phrases, describe, count or chat.
    pub task: String,
    /// The main image: base64 of a PNG / JPEG / BMP / GIF / WebP / TIFF file, or a `data:` URL.
    pub image: String,
    /// detect: the categories.
    pub categories: Option<Vec<String>>,
    /// ground: the referring expression (REC: the best box).
    pub expression: Option<String>,
    /// phrases: the phrases to ground, boxes per phrase.
    pub phrases: Option<Vec<String>>,
    /// describe: the region, pixels x1, y1, x2, y2 on the main image.
    #[serde(rename = "box")]
    pub region: Option<[f64; 4]>,
    /// count: the exemplar.
    pub exemplar: Option<ExemplarBody>,
    /// chat: the prompt; each `<region>` takes the next of `regions`.
    pub prompt: Option<String>,
    /// chat: region / exemplar images (base64) in the order of the prompt's `<region>` markers.
    pub regions: Option<Vec<String>>,
    /// Decoding (defaults as the CLI's: greedy, top-k 50, top-p 1, seed 0, 512 new tokens per answer, or
    /// less: the server's limit, `GET /v1/model`'s `max_new_tokens_limit`, bounds the whole
    /// request, shared by default among its answers, one per phrase or chunk of categories; a
    /// value given that exceeds it is refused).
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    /// auto (the checkpoint's) or a template name, as the CLI's `--template`.
    pub template: Option<String>,
    /// detect: categories per model call (default 80).
    pub chunk: Option<usize>,
    /// Constrain detection-style answers so that every answer parses.
    pub constrained: Option<bool>,
}

/// The exemplar of a count request: a crop (`image` alone), a box on the main image (`box`
/// alone), or a box on another image (`box` and `image`: cross-image co-referring).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExemplarBody {
    pub image: Option<String>,
    #[serde(rename = "box")]
    pub region: Option<[f64; 4]>,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The methods the path takes (a 405's `Allow` header).
    pub allow: Option<&'static str>,
}

impl Reply {
    fn json(status: u16, v: &serde_json::Value) -> Self {
        Self { status, content_type: "application/json", body: v.to_string().into_bytes(), allow: None }
    }

    fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.into() }))
    }
}

/// What `POST /v1/tasks` found wrong: bad input (400) or a failure of the model run (500).
#[derive(Debug)]
enum Failure {
    Input(String),
    Model(String),
}

/// The model and what the server says about it.
pub struct Service {
    model: Griffon,
    /// `GET /v1/model`'s answer, made when the service is set up (the connection threads answer
    /// it without the model).
    info: Vec<u8>,
    /// The model folder and load options, as `GET /v1/model` reports them.
    description: String,
    body_limit: usize,
    max_new_tokens_limit: usize,
}

/// Where a request goes: answered at once (the page, the model info, refusals), or to the model.
enum Route {
    Now(Reply),
    Task,
}

/// Routes `method` `url` ([`Route::Task`] only for `POST /v1/tasks`); `info` is the body of
/// `GET /v1/model`.
fn route(method: &str, url: &str, info: &[u8]) -> Route {
    let path = url.split(['?', '#']).next().unwrap_or("");
    Route::Now(match (method, path) {
        ("GET" | "HEAD", "/" | "/index.html") => {
            Reply { status: 200, content_type: "text/html; charset=utf-8", body: PAGE.as_bytes().to_vec(), allow: None }
        }
        ("GET" | "HEAD", "/v1/model") => {
            Reply { status: 200, content_type: "application/json", body: info.to_vec(), allow: None }
        }
        ("POST", "/v1/tasks") => return Route::Task,
        (_, "/" | "/index.html" | "/v1/model") => {
            Reply { allow: Some("GET, HEAD"), ..Reply::error(405, format!("{path}: use GET")) }
        }
        (_, "/v1/tasks") => {
            Reply { allow: Some("POST"), ..Reply::error(405, format!("{path}: use POST with a JSON body")) }
        }
        _ => Reply::error(404, format!("no such path {path:?}: GET /, GET /v1/model, POST /v1/tasks")),
    })
}

impl Service {
    /// `description`: the model folder and load options, as `GET /v1/model` reports them. The
    /// model's image-token cache is turned off: it keys on file paths, and every upload has a
    /// path of its own, so its entries could never be used again.
    pub fn new(mut model: Griffon, description: String) -> Self {
        model.image_cache = griffon_model::tasks::ImageTokenCache::new(0);
        Self { model, info: vec![], description, body_limit: DEFAULT_BODY_LIMIT, max_new_tokens_limit: 0 }
            .max_new_tokens_limit(DEFAULT_MAX_NEW_TOKENS_LIMIT)
    }

    /// Makes the body of `GET /v1/model` from the model and the settings.
    fn describe(&mut self) {
        let m = &self.model;
        self.info = serde_json::json!({
            "model": self.description,
            "template": m.template.name(),
            "image_size": m.image_size(),
            "region_size": m.region_size(),
            "tasks": ["detect", "ground", "phrases", "describe", "count", "chat"],
            "max_new_tokens_limit": self.max_new_tokens_limit,
        })
        .to_string()
        .into_bytes();
    }

    /// Refuse request bodies above `bytes` (413).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Refuse requests for more than `tokens` new tokens (400, naming `max_new_tokens`); a
    /// request that names none gets the CLI's default budget, or `tokens` when that is smaller.
    /// `GET /v1/model` reports it as `max_new_tokens_limit`.
    pub fn max_new_tokens_limit(mut self, tokens: usize) -> Self {
        self.max_new_tokens_limit = tokens.max(1);
        self.describe();
        self
    }

    /// Answers one request.
    pub fn handle(&self, method: &str, url: &str, body: &[u8]) -> Reply {
        match route(method, url, &self.info) {
            Route::Now(r) => r,
            Route::Task => self.task(body),
        }
    }

    /// Answers the body of a `POST /v1/tasks`.
    fn task(&self, body: &[u8]) -> Reply {
        match self.run(body) {
            Ok(v) => Reply::json(200, &v),
            Err(Failure::Input(m)) => Reply::error(400, m),
            Err(Failure::Model(m)) => Reply::error(500, m),
        }
    }

    fn run(&self, body: &[u8]) -> Result<serde_json::Value, Failure> {
        let start = Instant::now();
        let b = parse_body(body).map_err(Failure::Input)?;
        let dir = tempfile::Builder::new()
            .prefix("griffon-serve-")
            .tempdir()
            .map_err(|e| Failure::Model(format!("a temporary folder for the images: {e}")))?;
        // messages name the uploads by their field (the files are named so), not the folder
        let strip = |m: String| m.replace(&format!("{}/", dir.path().display()), "");
        let (req, opts) = request_of(&b, dir.path(), self.max_new_tokens_limit).map_err(|f| match f {
            Failure::Input(m) => Failure::Input(strip(m)),
            Failure::Model(m) => Failure::Model(strip(m)),
        })?;
        let out = self.model.run(&req, &opts).map_err(|e| match e {
            // an image error names its file, here the field: "exemplar.image: not a supported image ..."
            griffon_model::error::Error::Image(e) => Failure::Input(strip(e.to_string())),
            // what the request asked is at fault; an Error::Invalid (non-finite logits, say) is
            // the model's
            griffon_model::error::Error::Request(m) => Failure::Input(strip(m)),
            e => Failure::Model(strip(e.to_string())),
        })?;
        let mut v = serde_json::to_value(&out).map_err(|e| Failure::Model(format!("the answer as JSON: {e}")))?;
        v["elapsed_ms"] = serde_json::json!(start.elapsed().as_secs_f64() * 1e3);
        Ok(v)
    }
}

/// A request body as a [`TaskBody`]. serde names the field of an unknown or missing one, but a
/// value of the wrong type only by its position (a column on a one-line body of an image): each
/// field is then tried alone to name it.
fn parse_body(body: &[u8]) -> Result<TaskBody, String> {
    // serde would fill the fields from an array by position, past the named-field checks
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err("request body: a JSON array; send a JSON object with named fields".into());
    }
    // the body as it is first (a repeated key is refused here; a Value would keep the last)
    let whole = match serde_json::from_slice::<TaskBody>(body) {
        Ok(b) => return Ok(b),
        Err(e) => e,
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(format!("request body: {whole}"));
    };
    if let serde_json::Value::Object(fields) = &v {
        for (k, x) in fields {
            // the required fields filled with valid stand-ins, the field under test as sent
            let mut probe = serde_json::Map::new();
            probe.insert("task".into(), "detect".into());
            probe.insert("image".into(), "".into());
            probe.insert(k.clone(), x.clone());
            if let Err(e) = serde_json::from_value::<TaskBody>(serde_json::Value::Object(probe)) {
                return Err(format!("request body: field `{k}`: {e}"));
            }
        }
    }
    Err(format!("request body: {whole}"))
}

/// The bytes of a base64 field (plain, or a `data:...;base64,` URL; line breaks and other ASCII
/// white space ignored, as MIME-style encoders wrap lines).
fn decode_base64(field: &str, s: &str) -> Result<Vec<u8>, String> {
    let data = match s.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((_, d)) => d,
            None => return Err(format!("{field}: a data URL must be base64 (data:<type>;base64,<data>)")),
        },
        None => s,
    };
    let data: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(&data).map_err(|e| format!("{field}: not base64 ({e})"))?;
    if bytes.is_empty() {
        return Err(format!("{field}: empty (give the bytes of an image file, base64-encoded)"));
    }
    Ok(bytes)
}

/// Writes a base64 image field to `dir/<field>` and returns the path; bad base64 is the
/// client's fault, a failed write the server's.
fn upload(dir: &Path, field: &str, s: &str) -> Result<PathBuf, Failure> {
    let bytes = decode_base64(field, s).map_err(Failure::Input)?;
    let path = dir.join(field);
    std::fs::write(&path, bytes).map_err(|e| Failure::Model(format!("{field}: storing the upload: {e}")))?;
    Ok(path)
}

fn pixel_box(field: &str, b: [f64; 4]) -> Result<PixelBox, String> {
    if b.iter().any(|v| !v.is_finite()) {
        return Err(format!("{field}: {b:?} must be four finite numbers x1, y1, x2, y2"));
    }
    Ok(PixelBox::new(b[0], b[1], b[2], b[3]))
}

/// The core request and run options of a body; uploads are written into `dir`; at most
/// `max_new_tokens_limit` new tokens.
fn request_of(b: &TaskBody, dir: &Path, max_new_tokens_limit: usize) -> Result<(Request, RunOptions), Failure> {
    let input = |m: String| Failure::Input(m);
    // which optional fields each task reads; any other one given is refused
    let given: Vec<&str> = [
        ("categories", b.categories.is_some()),
        ("expression", b.expression.is_some()),
        ("phrases", b.phrases.is_some()),
        ("box", b.region.is_some()),
        ("exemplar", b.exemplar.is_some()),
        ("prompt", b.prompt.is_some()),
        ("regions", b.regions.is_some()),
        ("chunk", b.chunk.is_some()),
        ("constrained", b.constrained.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, g)| g.then_some(n))
    .collect();
    let uses: &[&str] = match b.task.as_str() {
        "detect" => &["categories", "chunk", "constrained"],
        "ground" => &["expression", "constrained"],
        "phrases" => &["phrases", "constrained"],
        "describe" => &["box"],
        "count" => &["exemplar", "constrained"],
        "chat" => &["prompt", "regions"],
        t => return Err(input(format!("task: unknown task {t:?} (detect, ground, phrases, describe, count, chat)"))),
    };
    if let Some(f) = given.iter().find(|f| !uses.contains(f)) {
        return Err(input(format!("{f}: not used by task {:?} (it reads {})", b.task, uses.join(", "))));
    }
    let missing = |f: &str| input(format!("{f}: task {:?} needs it", b.task));
    // the text is tokenized before the prompt's length is checked: a bound far above any
    // model's positions keeps a huge text from taking the worker's time and memory
    let lists = b.categories.iter().chain(&b.phrases).flatten();
    let text = [&b.expression, &b.prompt].into_iter().flatten().chain(lists).map(String::len).sum::<usize>();
    if text > MAX_TEXT {
        return Err(input(format!(
            "the request's text (categories, expression, phrases, prompt) takes {text} bytes, more than \
             this server's limit of {MAX_TEXT}"
        )));
    }
    let image = upload(dir, "image", &b.image)?;
    let task = match b.task.as_str() {
        "detect" => Task::Detect { categories: b.categories.clone().ok_or_else(|| missing("categories"))? },
        "ground" => Task::Ground { expression: b.expression.clone().ok_or_else(|| missing("expression"))? },
        "phrases" => Task::Phrases { phrases: b.phrases.clone().ok_or_else(|| missing("phrases"))? },
        "describe" => {
            Task::Describe { region: pixel_box("box", b.region.ok_or_else(|| missing("box"))?).map_err(input)? }
        }
        "count" => {
            let e = b.exemplar.as_ref().ok_or_else(|| missing("exemplar"))?;
            let exemplar = match (&e.image, e.region) {
                (Some(img), None) => Exemplar::Image(upload(dir, "exemplar.image", img)?),
                (None, Some(r)) => Exemplar::BoxOnImage(pixel_box("exemplar.box", r).map_err(input)?),
                (Some(img), Some(r)) => Exemplar::BoxOnOther {
                    image: upload(dir, "exemplar.image", img)?,
                    region: pixel_box("exemplar.box", r).map_err(input)?,
                },
                (None, None) => {
                    return Err(input(
                        "exemplar: give image (a crop), box (on the main image) or both (a box on that image)".into(),
                    ))
                }
            };
            Task::Count { exemplar }
        }
        _ => {
            let prompt = b.prompt.clone().ok_or_else(|| missing("prompt"))?;
            if prompt.trim().is_empty() {
                return Err(input("prompt: empty".to_string()));
            }
            let regions = b
                .regions
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, r)| upload(dir, &format!("regions[{i}]"), r).map(Exemplar::Image))
                .collect::<Result<Vec<_>, _>>()?;
            Task::Chat { prompt, regions }
        }
    };
    let chunk = b.chunk.unwrap_or(RunOptions::default().chunk);
    if chunk == 0 {
        return Err(input("chunk: must be at least 1".to_string()));
    }
    let req = Request { image, task };
    // the limit bounds the whole request: each turn (a chunk of categories, a phrase) decodes up
    // to max_new_tokens, so without a value given the default is shared among the turns
    let calls = req.turn_count(chunk).map_err(input)?;
    if calls > max_new_tokens_limit {
        return Err(input(format!(
            "the request makes {calls} model calls (one per phrase or per chunk of categories), more \
             than this server's limit of {max_new_tokens_limit} new tokens allows (griffon serve \
             --max-new-tokens-limit): send fewer phrases or categories, or a larger chunk"
        )));
    }
    let d = SamplingOptions::default();
    let sampling = SamplingOptions {
        max_new_tokens: b.max_new_tokens.unwrap_or(d.max_new_tokens.min(max_new_tokens_limit / calls)),
        temperature: b.temperature.unwrap_or(d.temperature),
        top_k: b.top_k.unwrap_or(d.top_k),
        top_p: b.top_p.unwrap_or(d.top_p),
        seed: b.seed.unwrap_or(d.seed),
    };
    if let Some((name, what)) = sampling.problem() {
        return Err(input(format!("{name}: {what}")));
    }
    if sampling.max_new_tokens.saturating_mul(calls) > max_new_tokens_limit {
        return Err(input(match calls {
            1 => format!(
                "max_new_tokens: at most {max_new_tokens_limit} on this server (griffon serve \
                 --max-new-tokens-limit), got {}",
                sampling.max_new_tokens
            ),
            _ => format!(
                "max_new_tokens: the request makes {calls} model calls (one per phrase or per chunk of \
                 categories) of up to {} new tokens each, more than this server's limit of \
                 {max_new_tokens_limit} in all (griffon serve --max-new-tokens-limit): give at most {}",
                sampling.max_new_tokens,
                max_new_tokens_limit / calls
            ),
        }));
    }
    let template = match b.template.as_deref() {
        None | Some("auto") => None,
        Some(t) => Some(t.parse::<Template>().map_err(|e| input(format!("template: {e}")))?),
    };
    let opts = RunOptions { sampling, template, chunk, constrained: b.constrained.unwrap_or(false) };
    Ok((req, opts))
}

/// The bytes of text a request may give ([`request_of`]).
const MAX_TEXT: usize = 1 << 20;
/// Connections read at once; one more is answered 503 (without reading it).
const MAX_CONNECTIONS: usize = 64;
/// The request line and headers may take this many bytes...
const MAX_HEAD: u64 = 64 << 10;
/// ... and must arrive within this time;
const HEAD_TIME: Duration = Duration::from_secs(30);
/// the body within this time, moved on by one second per [`BODY_RATE`] bytes received (a
/// client that declares a large body and trickles it cannot hold a connection for long).
const BODY_TIME: Duration = Duration::from_secs(30);
const BODY_RATE: u64 = 100_000;
/// After a reply, what the client still sends is read and dropped for at most this long (see
/// [`write_reply`]).
const LINGER: Duration = Duration::from_secs(5);

/// A listening socket, bound before the model loads (a port in use is reported at once, not
/// after minutes of loading a large checkpoint).
///
/// HTTP/1.1 on `std::net`, one request per connection (`Connection: close`), bodies by
/// `Content-Length` only: each connection is read on its own thread within a deadline (the
/// head in [`HEAD_TIME`], the body in [`BODY_TIME`] plus a second per [`BODY_RATE`] bytes received), a
/// declared length over the limit is refused before any of the body is read, the page and the
/// model info are answered on the connection's thread, and complete task requests go to the
/// model one at a time, in arrival order, on the thread that called [`Listener::serve`].
/// (tiny_http 0.12, the first transport, allocated the declared length of an unread body when
/// dropping it: one request with a huge `Content-Length` ended the process.)
pub struct Listener {
    listener: std::net::TcpListener,
    addr: std::net::SocketAddr,
}

/// The body of a complete task request on its way to the model (routed already), and where its
/// reply goes.
struct Job {
    body: Vec<u8>,
    reply: std::sync::mpsc::Sender<Reply>,
    /// Set by the connection's thread when its client closed the connection while the task
    /// waited: the worker skips it.
    gone: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How often a connection whose task waits checks whether its client is still there.
const GONE_CHECK: Duration = Duration::from_millis(250);

/// Whether the client closed its side: a read would see the end of the stream (or the
/// connection was reset). A request is complete when it is queued, so a client that still waits
/// sends nothing more; one that closes (curl -m, a closed page) has left. One that shut only its
/// sending side (`nc -N`) looks the same: its task is skipped if not started yet (and answered
/// 503 saying so), answered if it has started.
fn client_left(stream: &std::net::TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let r = stream.peek(&mut [0u8; 1]);
    let _ = stream.set_nonblocking(false);
    match r {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted),
    }
}

/// Counts an open connection while it lives (also when its thread panics).
struct Slot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Listener {
    /// Binds `addr` (e.g. `127.0.0.1:8080`; port 0 picks a free one).
    pub fn bind(addr: &str) -> Result<Self, String> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("listening on {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| format!("listening on {addr}: {e}"))?;
        Ok(Self { listener, addr: bound })
    }

    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Answers requests with `service` until the process ends. A panic inside the model is
    /// answered 500 and the server goes on.
    pub fn serve(&self, service: &Service) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let open = Arc::new(AtomicUsize::new(0));
        let limit = service.body_limit;
        let info: Arc<[u8]> = service.info.clone().into();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for stream in self.listener.incoming() {
                    let mut stream = match stream {
                        Ok(s) => s,
                        Err(e) => {
                            // out of file handles, say: do not spin on the error
                            eprintln!("accepting a connection: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                        let r = Reply::error(503, format!("{MAX_CONNECTIONS} connections are open: try again"));
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                        // what the client has sent already is read and dropped without waiting: a
                        // socket closed with unread data sends a reset, which could lose the 503
                        if stream.set_nonblocking(true).is_ok() {
                            let mut sink = [0u8; 16 << 10];
                            for _ in 0..64 {
                                if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
                                    break;
                                }
                            }
                            let _ = stream.set_nonblocking(false);
                        }
                        let _ = write_reply(&mut stream, &r, false, false);
                        continue;
                    }
                    open.fetch_add(1, Ordering::SeqCst);
                    let slot = Slot(open.clone());
                    let (tx, info) = (tx.clone(), info.clone());
                    // a failed spawn drops the closure: the slot is freed, the connection closed
                    let _ = std::thread::Builder::new().name("griffon-http".into()).spawn(move || {
                        let _slot = slot;
                        connection(stream, limit, &info, &tx);
                    });
                }
            });
            for job in rx {
                if job.gone.load(Ordering::SeqCst) {
                    eprintln!("a queued task was not run: its client closed the connection");
                    continue;
                }
                let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| service.task(&job.body)))
                    .unwrap_or_else(|p| {
                        let what = p
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| p.downcast_ref::<&str>().copied())
                            .unwrap_or("a panic");
                        Reply::error(500, format!("internal error: {what}"))
                    });
                // the client may have gone away meanwhile: nothing to do then
                let _ = job.reply.send(reply);
            }
        });
    }
}

/// Reads one request from `stream`, answers it (the model's through `jobs`), writes the reply.
fn connection(mut stream: std::net::TcpStream, limit: usize, info: &[u8], jobs: &std::sync::mpsc::Sender<Job>) {
    let _ = stream.set_write_timeout(Some(BODY_TIME));
    let (reply, head_only) = match read_request(&mut stream, limit) {
        Ok((method, url, body)) => {
            let head_only = method == "HEAD";
            let reply = match route(&method, &url, info) {
                Route::Now(r) => r,
                Route::Task => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let gone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    if jobs.send(Job { body, reply: tx, gone: gone.clone() }).is_err() {
                        Reply::error(503, "the server is stopping")
                    } else {
                        use std::sync::atomic::Ordering::SeqCst;
                        loop {
                            match rx.recv_timeout(GONE_CHECK) {
                                Ok(r) => break r,
                                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                                    // the worker skips the task if it has not started it (and drops
                                    // it); a task already running is answered, to a client that
                                    // only shut its sending side (`nc -N`) too
                                    if !gone.load(SeqCst) && client_left(&stream) {
                                        gone.store(true, SeqCst);
                                    }
                                }
                                // not run: said, in case the client only shut its sending side
                                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) if gone.load(SeqCst) => {
                                    break Reply::error(
                                        503,
                                        "not run: the connection was closed before the task started (keep it \
                                         open until the answer arrives)",
                                    )
                                }
                                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                                    break Reply::error(500, "the model worker stopped")
                                }
                            }
                        }
                    }
                }
            };
            (reply, head_only)
        }
        Err(r) => (r, false),
    };
    let _ = write_reply(&mut stream, &reply, head_only, true);
}

/// Reads from a stream until a deadline: each read waits at most what is left of it.
struct Deadline<'a> {
    stream: &'a std::net::TcpStream,
    until: Instant,
    /// Each byte read moves the deadline on by 1/`earn` s (0: a fixed deadline).
    earn: u64,
}

impl<'a> Deadline<'a> {
    fn fixed(stream: &'a std::net::TcpStream, time: Duration) -> Self {
        Deadline { stream, until: Instant::now() + time, earn: 0 }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client took too long"));
        }
        self.stream.set_read_timeout(Some(left))?;
        let n = (&*self.stream).read(buf)?;
        if self.earn > 0 {
            self.until += Duration::from_secs_f64(n as f64 / self.earn as f64);
        }
        Ok(n)
    }
}

/// The reply for a failed read: 408 when the client was too slow, else 400.
fn read_failed(what: &str, e: std::io::Error) -> Reply {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            Reply::error(408, format!("{what}: the client took too long"))
        }
        _ => Reply::error(400, format!("{what}: {e}")),
    }
}

/// The method, target and body of one HTTP/1.0 or 1.1 request, or the reply refusing it.
fn read_request(stream: &mut std::net::TcpStream, limit: usize) -> Result<(String, String, Vec<u8>), Reply> {
    use std::io::BufRead;
    let bad = |m: String| Reply::error(400, m);
    let mut reader = std::io::BufReader::new(Deadline::fixed(stream, HEAD_TIME)).take(MAX_HEAD);
    let mut line = String::new();
    let mut next_line = |line: &mut String| -> Result<(), Reply> {
        line.clear();
        match reader.read_line(line) {
            Ok(0) => Err(bad("the request ended inside its head".into())),
            // a line without its end: the size cap was reached, or the client stopped inside it
            Ok(_) if !line.ends_with('\n') && reader.limit() == 0 => {
                Err(Reply::error(431, format!("the request line and headers take more than {MAX_HEAD} bytes")))
            }
            Ok(_) if !line.ends_with('\n') => Err(bad("the request ended inside its head".into())),
            Ok(_) => Ok(()),
            Err(e) => Err(read_failed("reading the request head", e)),
        }
    };
    next_line(&mut line)?;
    let request_line = line.trim_end_matches(['\r', '\n']).to_string();
    let mut parts = request_line.split(' ');
    let (method, url, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(u), Some(v @ ("HTTP/1.0" | "HTTP/1.1")), None) if !m.is_empty() && u.starts_with('/') => {
            (m.to_string(), u.to_string(), v.to_string())
        }
        _ => return Err(bad(format!("not an HTTP/1.0 or 1.1 request line: {request_line:?}"))),
    };
    let mut length: Option<u64> = None;
    let mut expect_continue = false;
    loop {
        next_line(&mut line)?;
        let h = line.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if h.starts_with([' ', '\t']) {
            return Err(bad(format!("folded header line {h:?} (obsolete line folding is refused)")));
        }
        let Some((name, value)) = h.split_once(':') else {
            return Err(bad(format!("malformed header line {h:?}")));
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(bad(format!("malformed header name {name:?}")));
        }
        let value = value.trim_matches([' ', '\t']);
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = match value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
                    true => value.parse::<u64>().ok(),
                    false => None,
                }
                .ok_or_else(|| bad(format!("Content-Length {value:?} is not a number")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("two different Content-Length headers".into()));
                }
                if n > limit as u64 {
                    return Err(Reply::error(413, format!("request body of {n} bytes: the limit is {limit}")));
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                return Err(Reply::error(411, "send the body with Content-Length (no Transfer-Encoding)"));
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => expect_continue = true,
            _ => {}
        }
    }
    // what the head's reader took beyond the head is the start of the body
    let buffered = reader.into_inner().buffer().to_vec();
    if length.is_none() && method == "POST" && url.split(['?', '#']).next() == Some("/v1/tasks") {
        // the body is read by its declared length only (an HTTP/1.0 body up to the close is not)
        return Err(Reply::error(411, "send the body with Content-Length"));
    }
    let n = length.unwrap_or(0);
    if expect_continue && n > 0 && version == "HTTP/1.1" {
        use std::io::Write;
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(|e| read_failed("writing 100 Continue", e))?;
    }
    // the deadline moves on with the bytes received (not with the length declared): a client
    // that declares a large body and trickles it is cut after BODY_TIME
    let body_reader = Deadline { stream: &*stream, until: Instant::now() + BODY_TIME, earn: BODY_RATE };
    // grown as the bytes arrive (n is at most the limit, but a client may stop short)
    let mut body = Vec::new();
    buffered
        .chain(body_reader)
        .take(n)
        .read_to_end(&mut body)
        .map_err(|e| read_failed(&format!("reading the request body of {n} bytes"), e))?;
    if (body.len() as u64) < n {
        return Err(bad(format!("the request body ended after {} of its {n} bytes", body.len())));
    }
    Ok((method, url, body))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Writes `reply` (its head only for HEAD) and closes the exchange; with `linger`, what the
/// client still sends is read and dropped for at most [`LINGER`] first: a socket closed with
/// unread data sends a reset, and a client still sending a body we did not read (a 413) could
/// lose the reply.
fn write_reply(stream: &mut std::net::TcpStream, reply: &Reply, head_only: bool, linger: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    if let Some(allow) = reply.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes())?;
    if !head_only {
        stream.write_all(&reply.body)?;
    }
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)?;
    if linger {
        let mut sink = [0u8; 64 << 10];
        let mut r = Deadline::fixed(stream, LINGER);
        while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that waits is there; one that closed the connection, or its sending side, has
    /// left.
    #[test]
    fn clients_that_left_are_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let waiting = std::net::TcpStream::connect(addr).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        assert!(!client_left(&server_side));
        waiting.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(client_left(&server_side));
        let closed = std::net::TcpStream::connect(addr).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        drop(closed);
        std::thread::sleep(Duration::from_millis(50));
        assert!(client_left(&server_side));
    }
}
