//! `griffon serve` with the bundled default model (models/default, docs/SYNTH.md) on the bundled
//! sample scene: every task answers over HTTP what the library answers for the same request on the
//! image file (the upload path changes nothing); bad input gets 400 / 404 / 405 / 413 with a
//! message naming the field at fault; the socket loop serves the page, the model info and tasks,
//! and a port in use is refused when binding.

use base64::Engine;
use griffon_core::{Exemplar, PixelBox, Request, Task};
use griffon_model::generate::SamplingOptions;
use griffon_model::griffon::{Griffon, LoadOptions};
use griffon_model::tasks::RunOptions;
use griffon_server::{Reply, Service};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;

/// The bundled model's category list (its training always lists the six shapes).
const SHAPES: [&str; 6] = ["circle", "cross", "diamond", "ring", "square", "triangle"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scene() -> PathBuf {
    root().join("examples/synth/001801.png")
}

fn load() -> Griffon {
    let dir = root().join("models/default");
    assert!(dir.join("config.json").is_file(), "the bundled model {} is missing", dir.display());
    Griffon::load(&dir, &LoadOptions::default()).unwrap()
}

fn service() -> Service {
    Service::new(load(), "models/default".into())
}

fn b64(path: &std::path::Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

fn post(s: &Service, body: &Value) -> (u16, Value) {
    let r: Reply = s.handle("POST", "/v1/tasks", body.to_string().as_bytes());
    assert_eq!(r.content_type, "application/json");
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

/// The library's answer for the same request on the image file, as JSON.
fn direct(m: &Griffon, task: Task, opts: &RunOptions) -> Value {
    serde_json::to_value(m.run(&Request { image: scene(), task }, opts).unwrap()).unwrap()
}

fn without_time(mut v: Value) -> Value {
    assert!(v["elapsed_ms"].as_f64().unwrap() >= 0.0);
    v.as_object_mut().unwrap().remove("elapsed_ms");
    v
}

#[test]
fn every_task_answers_as_the_library_does_on_the_file() {
    let s = service();
    let m = load();
    let img = b64(&scene());
    let opts = RunOptions::default();
    let cats = vec!["circle".to_string(), "cross".to_string(), "square".to_string()];
    let region = PixelBox::new(40.0, 40.0, 120.0, 120.0);
    let crop = root().join("model/tests/fixtures/parity/gemma2_region/region.png");
    let cases: Vec<(Value, Task)> = vec![
        (json!({"task": "detect", "image": img, "categories": cats}), Task::Detect { categories: cats.clone() }),
        (
            json!({"task": "ground", "image": format!("data:image/png;base64,{img}"), "expression": "the circle"}),
            Task::Ground { expression: "the circle".into() },
        ),
        (
            json!({"task": "phrases", "image": img, "phrases": ["a circle", "a cross"]}),
            Task::Phrases { phrases: vec!["a circle".into(), "a cross".into()] },
        ),
        (json!({"task": "describe", "image": img, "box": [40, 40, 120, 120]}), Task::Describe { region }),
        (
            json!({"task": "count", "image": img, "exemplar": {"box": [40, 40, 120, 120]}}),
            Task::Count { exemplar: Exemplar::BoxOnImage(region) },
        ),
        (
            json!({"task": "count", "image": img, "exemplar": {"image": b64(&crop)}}),
            Task::Count { exemplar: Exemplar::Image(crop.clone()) },
        ),
        (
            json!({"task": "count", "image": img, "exemplar": {"image": img, "box": [40, 40, 120, 120]}}),
            Task::Count { exemplar: Exemplar::BoxOnOther { image: scene(), region } },
        ),
        (
            json!({"task": "chat", "image": img, "prompt": "What is <region>?", "regions": [b64(&crop)]}),
            Task::Chat { prompt: "What is <region>?".into(), regions: vec![Exemplar::Image(crop.clone())] },
        ),
    ];
    for (body, task) in cases {
        let name = body["task"].clone();
        let (status, v) = post(&s, &body);
        assert_eq!(status, 200, "{name}: {v}");
        assert_eq!(without_time(v), direct(&m, task, &opts), "{name}");
    }
    // each phrase's box says which phrase it answers (a phrase given twice is two turns)
    let (_, v) = post(&s, &json!({"task": "phrases", "image": img, "phrases": ["a circle", "a cross", "a circle"]}));
    let dets = v["detections"].as_array().unwrap();
    assert!(!dets.is_empty(), "{v}");
    for d in dets {
        let k = d["phrase"].as_u64().unwrap() as usize;
        assert_eq!(d["label"], ["a circle", "a cross", "a circle"][k], "{v}");
    }
    // the detection found an object of the scene (the model is real: docs/SYNTH.md; asked as it
    // was trained, with the six shapes: a shorter list is outside its training, models/default)
    let (_, v) = post(&s, &json!({"task": "detect", "image": img, "categories": SHAPES}));
    let dets = v["detections"].as_array().unwrap();
    assert!(!dets.is_empty(), "{v}");
    for d in dets {
        let b: Vec<f64> = d["box"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert!(b[0] <= b[2] && b[1] <= b[3] && b[2] <= 224.0 && b[3] <= 224.0, "{d}");
    }
    // decoding settings travel: sampling with a seed is repeatable and differs from nothing else
    let body = json!({"task": "describe", "image": img, "box": [40, 40, 120, 120], "temperature": 5.0,
                      "top_p": 1.0, "seed": 7, "max_new_tokens": 6});
    let (status, a) = post(&s, &body);
    assert_eq!(status, 200, "{a}");
    let sampled = RunOptions {
        sampling: griffon_model::generate::SamplingOptions {
            max_new_tokens: 6,
            temperature: 5.0,
            top_p: 1.0,
            seed: 7,
            ..Default::default()
        },
        ..RunOptions::default()
    };
    let greedy = RunOptions {
        sampling: griffon_model::generate::SamplingOptions { max_new_tokens: 6, ..Default::default() },
        ..RunOptions::default()
    };
    // (a server that dropped the settings would answer greedily)
    assert_ne!(a["text"], direct(&m, Task::Describe { region }, &greedy)["text"], "{a}");
    assert_eq!(without_time(a), direct(&m, Task::Describe { region }, &sampled));
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let s = service();
    let img = b64(&scene());
    let not_image = base64::engine::general_purpose::STANDARD.encode(b"hello, not an image");
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{not json", 400, "request body: key must be a string"),
        (b"", 400, "request body: EOF"),
        // serde would take an array's items as the fields in order
        (br#" ["detect", "aGk=", ["a"]]"#, 400, "request body: a JSON array; send a JSON object"),
        (br#"{"task": "detect", "categories": ["a"]}"#, 400, "missing field `image`"),
        (br#"{"task": "detect", "image": "aGk=", "categorys": ["a"]}"#, 400, "unknown field `categorys`"),
        (
            br#"{"task": "detect", "image": "aGk=", "categories": "a"}"#,
            400,
            "field `categories`: invalid type: string \"a\", expected a sequence",
        ),
        (br#"{"task": "detect", "image": "aGk=", "max_new_tokens": -1}"#, 400, "field `max_new_tokens`: invalid value"),
        (br#"{"task": "detect", "image": "aGk=", "image": "aGk="}"#, 400, "duplicate field `image`"),
        (br#"{"task": "describe", "image": "aGk=", "box": [1, 2, 3]}"#, 400, "field `box`: invalid length 3"),
        (br#"{"task": "ground", "image": "aGk=", "exemplar": {"box": "x"}}"#, 400, "field `exemplar`: invalid type"),
    ];
    for (body, status, want) in cases {
        let r = s.handle("POST", "/v1/tasks", body);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(r.status, status, "{v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{v} lacks {want:?}");
    }
    let json_cases: Vec<(Value, &str)> = vec![
        (json!({"task": "find", "image": img}), "task: unknown task \"find\""),
        (json!({"task": "detect", "image": img}), "categories: task \"detect\" needs it"),
        (json!({"task": "detect", "image": img, "categories": []}), "the category list is empty"),
        (
            json!({"task": "detect", "image": img, "categories": ["a"], "expression": "b"}),
            "expression: not used by task \"detect\" (it reads categories, chunk, constrained)",
        ),
        (json!({"task": "ground", "image": img, "expression": "x", "chunk": 3}), "chunk: not used by task \"ground\""),
        (json!({"task": "detect", "image": "%%%", "categories": ["a"]}), "image: not base64"),
        (json!({"task": "detect", "image": "", "categories": ["a"]}), "image: empty"),
        (
            json!({"task": "detect", "image": "data:image/png,abc", "categories": ["a"]}),
            "image: a data URL must be base64",
        ),
        (json!({"task": "detect", "image": not_image, "categories": ["a"]}), "image: not a supported image"),
        (json!({"task": "count", "image": img, "exemplar": {}}), "exemplar: give image (a crop), box"),
        (
            json!({"task": "count", "image": img, "exemplar": {"image": not_image}}),
            "exemplar.image: not a supported image",
        ),
        (json!({"task": "chat", "image": img, "prompt": "  "}), "prompt: empty"),
        (
            json!({"task": "chat", "image": img, "prompt": "What is <region>?", "regions": ["%"]}),
            "regions[0]: not base64",
        ),
        (
            json!({"task": "detect", "image": img, "categories": ["a"], "temperature": -1}),
            "temperature: must be >= 0, got -1",
        ),
        (json!({"task": "detect", "image": img, "categories": ["a"], "top_p": 0}), "top_p: must be in (0, 1], got 0"),
        (json!({"task": "detect", "image": img, "categories": ["a"], "seed": 4}), "seed: applies when sampling only"),
        (
            json!({"task": "detect", "image": img, "categories": ["a"], "top_p": 0.5}),
            "top_p: applies when sampling only",
        ),
        (json!({"task": "detect", "image": img, "categories": ["a"], "top_k": 0}), "top_k: applies when sampling only"),
        (
            json!({"task": "detect", "image": img, "categories": ["a"], "max_new_tokens": 0}),
            "max_new_tokens: must be at least 1",
        ),
        (json!({"task": "detect", "image": img, "categories": ["a"], "chunk": 0}), "chunk: must be at least 1"),
        (json!({"task": "detect", "image": img, "categories": ["a"], "template": "nope"}), "template:"),
        (
            json!({"task": "describe", "image": img, "box": [1, 1, 9, 9], "constrained": true}),
            "constrained: not used by task \"describe\"",
        ),
        // the model's own checks are bad input too, without the uploads' folder in the message
        (
            json!({"task": "describe", "image": img, "box": [10, 10, 900, 900]}),
            "region box: box [10.0, 10.0, 900.0, 900.0] lies outside the 224x224 image",
        ),
        (
            json!({"task": "count", "image": img, "exemplar": {"box": [10, 10, 900, 900]}}),
            "exemplar box: box [10.0, 10.0, 900.0, 900.0] lies outside the 224x224 image",
        ),
        (
            json!({"task": "chat", "image": img, "prompt": "What is <region>?"}),
            "the prompt has 1 <region> marker(s) but 0 region exemplar(s) were given",
        ),
        (
            json!({"task": "ground", "image": img, "expression": "a".repeat((1 << 20) + 1)}),
            "takes 1048577 bytes, more than this server's limit of 1048576",
        ),
    ];
    for (body, want) in json_cases {
        let (status, v) = post(&s, &body);
        assert_eq!(status, 400, "{body}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
        // the temporary folder of the uploads is not what a client needs to read
        assert!(!e.contains("griffon-serve-"), "{e}");
    }
    // base64 wrapped in lines (MIME-style encoders) is the same image
    let wrapped: Vec<&str> = img.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap()).collect();
    let (status, v) = post(&s, &json!({"task": "detect", "image": wrapped.join("\n"), "categories": ["circle"]}));
    assert_eq!(status, 200, "{v}");
    for (method, url, status, allow) in [
        ("GET", "/nope", 404, None),
        ("GET", "/v1/tasks", 405, Some("POST")),
        ("POST", "/", 405, Some("GET, HEAD")),
        ("PUT", "/v1/model", 405, Some("GET, HEAD")),
    ] {
        let r = s.handle(method, url, b"");
        assert_eq!(r.status, status, "{method} {url}");
        assert_eq!(r.allow, allow, "{method} {url}");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["error"].as_str().unwrap().contains(url.trim_end_matches('/')), "{v}");
    }
}

/// A request for more new tokens than the server's limit is refused naming the field; one that
/// names none gets the smaller of the CLI's default and the limit, and says the answer was cut.
#[test]
fn new_tokens_are_limited() {
    let m = load();
    let opts =
        |n| RunOptions { sampling: SamplingOptions { max_new_tokens: n, ..Default::default() }, ..Default::default() };
    let task = Task::Detect { categories: vec!["circle".into(), "cross".into()] };
    let want = direct(&m, task, &opts(6));
    let s = Service::new(m, "models/default".into()).max_new_tokens_limit(6);
    let info: Value = serde_json::from_slice(&s.handle("GET", "/v1/model", b"").body).unwrap();
    assert_eq!(info["max_new_tokens_limit"], 6, "{info}");
    let img = b64(&scene());
    let body = json!({"task": "detect", "image": img, "categories": ["circle", "cross"], "max_new_tokens": 7});
    let (status, v) = post(&s, &body);
    assert_eq!(status, 400, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("max_new_tokens: at most 6 on this server (griffon serve --max-new-tokens-limit), got 7"),
        "{e}"
    );
    for n in [None, Some(6)] {
        let mut body = json!({"task": "detect", "image": img, "categories": ["circle", "cross"]});
        if let Some(n) = n {
            body["max_new_tokens"] = json!(n);
        }
        let (status, v) = post(&s, &body);
        assert_eq!(status, 200, "{v}");
        assert_eq!(without_time(v), want, "{body}");
    }
    assert_eq!(want["truncated"], true, "{want}");
    // the limit bounds the whole request: a phrase or a chunk of categories is one model call
    let body = json!({"task": "phrases", "image": img, "phrases": ["circle", "cross"], "max_new_tokens": 4});
    let (status, v) = post(&s, &body);
    let e = v["error"].as_str().unwrap();
    assert!(status == 400 && e.contains("makes 2 model calls") && e.contains("give at most 3"), "{e}");
    let many: Vec<String> = (0..7).map(|i| format!("thing {i}")).collect();
    let (status, v) = post(&s, &json!({"task": "phrases", "image": img, "phrases": many}));
    let e = v["error"].as_str().unwrap();
    assert!(status == 400 && e.contains("makes 7 model calls"), "{e}");
    // without max_new_tokens the calls share the limit
    let (status, v) = post(&s, &json!({"task": "detect", "image": img, "categories": ["circle", "cross"], "chunk": 1}));
    assert_eq!(status, 200, "{v}");
    let task = Task::Detect { categories: vec!["circle".into(), "cross".into()] };
    assert_eq!(without_time(v), direct(&load(), task, &RunOptions { chunk: 1, ..opts(3) }));
}

/// Sends `raw` as it is and reads the whole answer: (status, headers, body), an interim
/// `100 Continue` skipped.
fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(120))).unwrap();
    c.write_all(raw).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    let mut rest = &got[..];
    loop {
        let split = rest.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
        let head = String::from_utf8_lossy(&rest[..split]).to_string();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        rest = &rest[split + 4..];
        if status != 100 {
            return (status, head, rest.to_vec());
        }
    }
}

fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut raw =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    raw.extend_from_slice(body);
    let (status, _, body) = exchange(addr, &raw);
    (status, body)
}

fn error_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["error"].as_str().unwrap().to_string()
}

#[test]
fn the_socket_serves_page_model_and_tasks() {
    let listener = griffon_server::Listener::bind("127.0.0.1:0").unwrap();
    let addr = listener.addr();
    assert_ne!(addr.port(), 0);
    // the address is taken: a second server on it is refused, naming it
    let e = griffon_server::Listener::bind(&addr.to_string()).err().expect("the port is in use");
    assert!(e.starts_with(&format!("listening on {addr}: ")), "{e}");
    std::thread::spawn(move || listener.serve(&service().body_limit(2 << 20)));
    let (status, page) = http(addr, "GET", "/", b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8(page).unwrap().contains("/v1/tasks"));
    let (status, head, body) = exchange(addr, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 200);
    assert!(head.contains(&format!("Content-Length: {}", griffon_server::PAGE.len())), "{head}");
    assert!(body.is_empty());
    let (status, info) = http(addr, "GET", "/v1/model", b"");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["image_size"], 224, "{info}");
    assert_eq!(info["model"], "models/default");
    assert_eq!(info["max_new_tokens_limit"], griffon_server::DEFAULT_MAX_NEW_TOKENS_LIMIT, "{info}");
    let body = json!({"task": "detect", "image": b64(&scene()), "categories": SHAPES}).to_string();
    let (status, v) = http(addr, "POST", "/v1/tasks", body.as_bytes());
    let v: Value = serde_json::from_slice(&v).unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(!v["detections"].as_array().unwrap().is_empty(), "{v}");
    // curl's way for large bodies: Expect: 100-continue, the body after the interim answer
    let raw = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, again) = exchange(addr, raw.as_bytes());
    assert_eq!(status, 200);
    let again: Value = serde_json::from_slice(&again).unwrap();
    assert_eq!(again["detections"], v["detections"]);
    // over the limit: refused from the declared length, before any of the body is read
    let (status, v) = http(addr, "POST", "/v1/tasks", &vec![b' '; (2 << 20) + 1]);
    assert_eq!(status, 413);
    assert!(error_of(&v).contains("the limit is 2097152"), "{}", error_of(&v));
    let huge = b"POST /v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551615\r\n\r\n{";
    let (status, _, v) = exchange(addr, huge);
    assert_eq!(status, 413, "{}", error_of(&v));
    let (status, _, v) =
        exchange(addr, b"POST /v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n");
    assert_eq!(status, 400);
    assert!(error_of(&v).contains("is not a number"), "{}", error_of(&v));
    let (status, _, v) =
        exchange(addr, b"POST /v1/tasks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n0\r\n\r\n");
    assert_eq!(status, 411, "{}", error_of(&v));
    // a body is read by its declared length only
    let (status, _, v) = exchange(addr, b"POST /v1/tasks HTTP/1.0\r\n\r\n{\"task\": \"chat\"}");
    assert!(status == 411 && error_of(&v).contains("Content-Length"), "{}", error_of(&v));
    let (status, _, _) = exchange(addr, b"POST / HTTP/1.0\r\n\r\n");
    assert_eq!(status, 405);
    // a client that shuts its sending side after the request (nc -N) is answered
    let body =
        json!({"task": "detect", "image": b64(&scene()), "categories": ["circle"], "max_new_tokens": 4}).to_string();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "POST /v1/tasks HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    let (status, _, v) = exchange(addr, b"hello there\r\n\r\n");
    assert_eq!(status, 400);
    assert!(error_of(&v).contains("not an HTTP/1.0 or 1.1 request line"), "{}", error_of(&v));
    for (raw, want) in [
        (&b"POST /v1/tasks HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}"[..], "two different"),
        (b"POST /v1/tasks HTTP/1.1\r\nContent-Length: +5\r\n\r\n{}", "is not a number"),
        (b"GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n", "folded header"),
        (b"GET / HTTP/1.1\r\nContent-Length : 0\r\n\r\n", "malformed header name"),
        (b"GET / HTTP/2.0\r\n\r\n", "not an HTTP/1.0 or 1.1"),
        (b"POST /v1/tasks HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}", "ended after 2 of its 10 bytes"),
        (b"POST /v1/tasks HTTP/1.1\r\nContent-Len", "ended inside its head"),
    ] {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(raw).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap(); // the body stops short where it does
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        let got = String::from_utf8_lossy(&got).to_string();
        assert!(got.starts_with("HTTP/1.1 400 ") && got.contains(want), "{want}: {got}");
    }
    // HTTP/1.0 is spoken too
    let (status, _, v) = exchange(addr, b"GET /v1/model HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<Value>(&v).unwrap()["image_size"], 224);
    // a body far over the limit, sent whole without waiting: the 413 still arrives
    let (status, v) = http(addr, "POST", "/v1/tasks", &vec![b' '; 12 << 20]);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&v));
    let (status, head, _) = exchange(addr, b"DELETE /v1/tasks HTTP/1.1\r\n\r\n");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: POST"), "{head}");
    // a client that declares a body and leaves before sending it all, and one that stalls
    {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"POST /v1/tasks HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"task\"").unwrap();
    }
    let mut _stalled = std::net::TcpStream::connect(addr).unwrap();
    _stalled.write_all(b"POST /v1/tasks HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"task\"").unwrap();
    // a client that sends nothing holds only its own connection
    let _idle = std::net::TcpStream::connect(addr).unwrap();
    // ... and the server still answers
    let (status, _) = http(addr, "GET", "/v1/model", b"");
    assert_eq!(status, 200);
    // at capacity (64 open connections, two held above) one more is told so at once; when
    // they close, the server answers again
    let idle: Vec<std::net::TcpStream> = (0..62).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    // (the acceptor counts them as it accepts them: on a loaded machine that takes a while)
    let full = (0..100).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (status, _, v) = exchange(addr, b"GET /v1/model HTTP/1.1\r\n\r\n");
        (status == 503).then_some(v)
    });
    assert!(full.is_some(), "never answered 503 with 64 connections open");
    drop((idle, _idle, _stalled));
    let back = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        http(addr, "GET", "/v1/model", b"").0 == 200
    });
    assert!(back, "the server answers again once the connections close");
}
