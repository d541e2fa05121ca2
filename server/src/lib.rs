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
//! image, a box outside the image, sampling settings out of range); an unknown path 404, a wrong
//! method 405, a body over the limit 413. Requests are answered one at a time, in arrival order
//! (one model, one set of weights in memory).
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
use std::time::Instant;

/// The web page served at `/`.
pub const PAGE: &str = include_str!("page.html");

/// Request bodies above this many bytes are refused (413) unless [`Service::body_limit`] says
/// otherwise: room for a few base64 images of 1022 px and more.
pub const DEFAULT_BODY_LIMIT: usize = 64 << 20;

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
    /// Decoding (defaults as the CLI's: 512 tokens, greedy, top-p 1, seed 0).
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f64>,
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
}

impl Reply {
    fn json(status: u16, v: &serde_json::Value) -> Self {
        Self { status, content_type: "application/json", body: v.to_string().into_bytes() }
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
    /// The model folder and load options (`GET /v1/model`).
    description: String,
    body_limit: usize,
}

impl Service {
    pub fn new(model: Griffon, description: String) -> Self {
        Self { model, description, body_limit: DEFAULT_BODY_LIMIT }
    }

    /// Refuse request bodies above `bytes` (413).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Answers one request.
    pub fn handle(&self, method: &str, url: &str, body: &[u8]) -> Reply {
        let path = url.split(['?', '#']).next().unwrap_or("");
        match (method, path) {
            ("GET" | "HEAD", "/" | "/index.html") => {
                Reply { status: 200, content_type: "text/html; charset=utf-8", body: PAGE.as_bytes().to_vec() }
            }
            ("GET" | "HEAD", "/v1/model") => Reply::json(200, &self.info()),
            ("POST", "/v1/tasks") => match self.run(body) {
                Ok(v) => Reply::json(200, &v),
                Err(Failure::Input(m)) => Reply::error(400, m),
                Err(Failure::Model(m)) => Reply::error(500, m),
            },
            (_, "/" | "/index.html" | "/v1/model") => Reply::error(405, format!("{path}: use GET")),
            (_, "/v1/tasks") => Reply::error(405, format!("{path}: use POST with a JSON body")),
            _ => Reply::error(404, format!("no such path {path:?}: GET /, GET /v1/model, POST /v1/tasks")),
        }
    }

    fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.description,
            "template": self.model.template.name(),
            "image_size": self.model.image_size(),
            "region_size": self.model.region_size(),
            "tasks": ["detect", "ground", "phrases", "describe", "count", "chat"],
        })
    }

    fn run(&self, body: &[u8]) -> Result<serde_json::Value, Failure> {
        let start = Instant::now();
        let b: TaskBody = serde_json::from_slice(body).map_err(|e| Failure::Input(format!("request body: {e}")))?;
        let dir = tempfile::Builder::new()
            .prefix("griffon-serve-")
            .tempdir()
            .map_err(|e| Failure::Model(format!("a temporary folder for the images: {e}")))?;
        let (req, opts) = request_of(&b, dir.path()).map_err(Failure::Input)?;
        // messages name the uploads by their field (the files are named so), not the folder
        let strip = |m: String| m.replace(&format!("{}/", dir.path().display()), "");
        let out = self.model.run(&req, &opts).map_err(|e| match e {
            // an image error names its file, here the field: "exemplar.image: not a supported image ..."
            griffon_model::error::Error::Image(e) => Failure::Input(strip(e.to_string())),
            griffon_model::error::Error::Invalid(m) => Failure::Input(strip(m)),
            e => Failure::Model(strip(e.to_string())),
        })?;
        let mut v = serde_json::to_value(&out).map_err(|e| Failure::Model(format!("the answer as JSON: {e}")))?;
        v["elapsed_ms"] = serde_json::json!(start.elapsed().as_secs_f64() * 1e3);
        Ok(v)
    }
}

/// The bytes of a base64 field (plain, or a `data:...;base64,` URL).
fn decode_base64(field: &str, s: &str) -> Result<Vec<u8>, String> {
    let data = match s.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((_, d)) => d,
            None => return Err(format!("{field}: a data URL must be base64 (data:<type>;base64,<data>)")),
        },
        None => s,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("{field}: not base64 ({e})"))?;
    if bytes.is_empty() {
        return Err(format!("{field}: empty (give the bytes of an image file, base64-encoded)"));
    }
    Ok(bytes)
}

/// Writes a base64 image field to `dir/<field>` and returns the path.
fn upload(dir: &Path, field: &str, s: &str) -> Result<PathBuf, String> {
    let bytes = decode_base64(field, s)?;
    let path = dir.join(field);
    std::fs::write(&path, bytes).map_err(|e| format!("{field}: writing it to {}: {e}", path.display()))?;
    Ok(path)
}

fn pixel_box(field: &str, b: [f64; 4]) -> Result<PixelBox, String> {
    if b.iter().any(|v| !v.is_finite()) {
        return Err(format!("{field}: {b:?} must be four finite numbers x1, y1, x2, y2"));
    }
    Ok(PixelBox::new(b[0], b[1], b[2], b[3]))
}

/// The core request and run options of a body; uploads are written into `dir`.
pub fn request_of(b: &TaskBody, dir: &Path) -> Result<(Request, RunOptions), String> {
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
    ]
    .into_iter()
    .filter_map(|(n, g)| g.then_some(n))
    .collect();
    let uses: &[&str] = match b.task.as_str() {
        "detect" => &["categories", "chunk"],
        "ground" => &["expression"],
        "phrases" => &["phrases"],
        "describe" => &["box"],
        "count" => &["exemplar"],
        "chat" => &["prompt", "regions"],
        t => return Err(format!("task: unknown task {t:?} (detect, ground, phrases, describe, count, chat)")),
    };
    if let Some(f) = given.iter().find(|f| !uses.contains(f)) {
        return Err(format!("{f}: not used by task {:?} (it reads {})", b.task, uses.join(", ")));
    }
    let missing = |f: &str| format!("{f}: task {:?} needs it", b.task);
    let image = upload(dir, "image", &b.image)?;
    let task = match b.task.as_str() {
        "detect" => Task::Detect { categories: b.categories.clone().ok_or_else(|| missing("categories"))? },
        "ground" => Task::Ground { expression: b.expression.clone().ok_or_else(|| missing("expression"))? },
        "phrases" => Task::Phrases { phrases: b.phrases.clone().ok_or_else(|| missing("phrases"))? },
        "describe" => Task::Describe { region: pixel_box("box", b.region.ok_or_else(|| missing("box"))?)? },
        "count" => {
            let e = b.exemplar.as_ref().ok_or_else(|| missing("exemplar"))?;
            let exemplar = match (&e.image, e.region) {
                (Some(img), None) => Exemplar::Image(upload(dir, "exemplar.image", img)?),
                (None, Some(r)) => Exemplar::BoxOnImage(pixel_box("exemplar.box", r)?),
                (Some(img), Some(r)) => Exemplar::BoxOnOther {
                    image: upload(dir, "exemplar.image", img)?,
                    region: pixel_box("exemplar.box", r)?,
                },
                (None, None) => {
                    return Err("exemplar: give image (a crop), box (on the main image) or both (a box on that image)"
                        .to_string())
                }
            };
            Task::Count { exemplar }
        }
        _ => {
            let prompt = b.prompt.clone().ok_or_else(|| missing("prompt"))?;
            if prompt.trim().is_empty() {
                return Err("prompt: empty".to_string());
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
    let d = SamplingOptions::default();
    let sampling = SamplingOptions {
        max_new_tokens: b.max_new_tokens.unwrap_or(d.max_new_tokens),
        temperature: b.temperature.unwrap_or(d.temperature),
        top_p: b.top_p.unwrap_or(d.top_p),
        seed: b.seed.unwrap_or(d.seed),
    };
    if let Some((name, what)) = sampling.problem() {
        return Err(format!("{name}: {what}"));
    }
    let template = match b.template.as_deref() {
        None | Some("auto") => None,
        Some(t) => Some(t.parse::<Template>().map_err(|e| format!("template: {e}"))?),
    };
    let chunk = b.chunk.unwrap_or(RunOptions::default().chunk);
    if chunk == 0 {
        return Err("chunk: must be at least 1".to_string());
    }
    let opts = RunOptions { sampling, template, chunk, constrained: b.constrained.unwrap_or(false) };
    Ok((Request { image, task }, opts))
}

/// A listening socket, bound before the model loads (a port in use is reported at once, not
/// after minutes of loading a large checkpoint).
pub struct Listener {
    server: tiny_http::Server,
    addr: std::net::SocketAddr,
}

impl Listener {
    /// Binds `addr` (e.g. `127.0.0.1:8080`; port 0 picks a free one).
    pub fn bind(addr: &str) -> Result<Self, String> {
        let server = tiny_http::Server::http(addr).map_err(|e| format!("listening on {addr}: {e}"))?;
        let bound = server.server_addr().to_ip().ok_or_else(|| format!("listening on {addr}: not an IP address"))?;
        Ok(Self { server, addr: bound })
    }

    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Answers requests with `service`, one at a time, until the process ends.
    pub fn serve(&self, service: &Service) {
        for mut rq in self.server.incoming_requests() {
            let method = rq.method().as_str().to_string();
            let url = rq.url().to_string();
            let reply = match read_body(&mut rq, service.body_limit) {
                Ok(body) => service.handle(&method, &url, &body),
                Err(r) => r,
            };
            let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type.as_bytes())
                .expect("a valid header");
            let response =
                tiny_http::Response::from_data(reply.body).with_status_code(reply.status).with_header(header);
            // a client that went away before its answer is not the server's failure
            if let Err(e) = rq.respond(response) {
                eprintln!("{method} {url}: answering: {e}");
            }
        }
    }
}

/// The body, or the reply refusing it: over `limit` bytes (413, from the declared length before
/// reading, else while reading), or unreadable (400).
fn read_body(rq: &mut tiny_http::Request, limit: usize) -> Result<Vec<u8>, Reply> {
    let too_big = |n: String| Reply::error(413, format!("request body of {n} bytes: the limit is {limit}"));
    if let Some(n) = rq.body_length().filter(|&n| n > limit) {
        return Err(too_big(n.to_string()));
    }
    let mut body = Vec::new();
    rq.as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Reply::error(400, format!("reading the request body: {e}")))?;
    if body.len() > limit {
        return Err(too_big(format!("more than {limit}")));
    }
    Ok(body)
}
