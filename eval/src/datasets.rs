//! Readers for the standard evaluation annotation files, each turning a dataset into
//! [`Item`]s: a request for the model plus the ground truth needed to score it.
//!
//! * COCO instances json (detection over all categories);
//! * Shikra-style RefCOCO/+/g jsonl (`{"img_path", "expression", "bbox": [x1,y1,x2,y2]}`);
//! * Flickr30K Entities `Sentences/*.txt` + `Annotations/*.xml`;
//! * REG jsonl with reference expressions (`{"img_path", "bbox", "expressions": [...]}`);
//! * FSC-147 (`annotation_FSC147_384.json` + `Train_Test_Val_FSC_147.json`) and FSCD-LVIS style
//!   counting (`{"image", "exemplar": [x1,y1,x2,y2], "count"}` jsonl).

use griffon_core::{Exemplar, PixelBox, Request, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

use crate::EvalError;

/// One evaluation sample.
#[derive(Debug, Clone)]
pub struct Item {
    /// Unique, stable id (resume and merge key).
    pub id: String,
    pub request: Request,
    pub truth: Truth,
}

/// What a sample is scored against (stored in the per-sample JSONL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Truth {
    Coco {
        image_id: u64,
    },
    Rec {
        gt_box: [f64; 4],
        /// The image's `[width, height]` where the data gives them (Shikra-style lines do): the
        /// reference scales the answer's normalized box by them (`eval/eval_rec.py`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<[u32; 2]>,
    },
    Phrases {
        phrases: Vec<PhraseTruth>,
    },
    Reg {
        refs: Vec<String>,
    },
    /// `boxes`: every object of the exemplar's class, where the data gives them (the synthetic
    /// benchmark's `count_any.jsonl`); then the run also reports how the answer's boxes match them.
    Count {
        count: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boxes: Option<Vec<[f64; 4]>>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhraseTruth {
    pub phrase: String,
    pub boxes: Vec<[f64; 4]>,
}

fn read_json(path: &Path) -> Result<Value, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| EvalError::Json { path: path.into(), source })
}

fn fmt_err(path: &Path, message: String) -> EvalError {
    EvalError::Format { path: path.into(), message }
}

/// The error for a field of line `line` that is not a ground-truth box (see [`box_value`]).
fn not_a_box(path: &Path, line: usize, field: &str) -> EvalError {
    fmt_err(path, format!("line {line}: {field} is not [x1,y1,x2,y2] with x1 <= x2 and y1 <= y2"))
}

/// Lines of a jsonl file as values, with 1-based line numbers; a bad line is an error naming it.
fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.into(), source })?;
    // a byte-order mark (some editors write one) is not part of the first record
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| fmt_err(path, format!("line {}: malformed JSON: {e}", i + 1)))?;
        if !v.is_object() {
            let found = if v.is_array() { "a JSON array (a .json list, not jsonl?)" } else { "not a JSON object" };
            return Err(fmt_err(path, format!("line {}: expected one JSON object per line, found {found}", i + 1)));
        }
        out.push((i + 1, v));
    }
    Ok(out)
}

fn str_field<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_str))
}

fn box_field(v: &Value, key: &str) -> Option<[f64; 4]> {
    let a = v.get(key)?;
    // a flat box, or a list holding one box
    match a.as_array()? {
        one if one.len() == 1 => box_value(&one[0]),
        _ => box_value(a),
    }
}

/// A flat `[x1, y1, x2, y2]` of numbers with x1 <= x2 and y1 <= y2.
fn box_value(v: &Value) -> Option<[f64; 4]> {
    let a = v.as_array()?;
    if a.len() != 4 {
        return None;
    }
    let mut b = [0.0; 4];
    for (i, x) in a.iter().enumerate() {
        b[i] = x.as_f64()?;
    }
    // an inverted box cannot be a ground truth (its IoU with anything is 0)
    (b.iter().all(|x| x.is_finite()) && b[0] <= b[2] && b[1] <= b[3]).then_some(b)
}

/// COCO instances json: one detection item per image, over every category.
pub fn coco(annotations: &Path, images: &Path) -> Result<Vec<Item>, EvalError> {
    // the scorer's ground-truth checks, before any model runs
    crate::coco::check_annotations(annotations)?;
    let v = read_json(annotations)?;
    let cats: Vec<String> = v
        .get("categories")
        .and_then(Value::as_array)
        .ok_or_else(|| fmt_err(annotations, "missing `categories`".into()))?
        .iter()
        .map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| fmt_err(annotations, "a category has no `name`".into()))?;
    coco_images(&v, annotations)?
        .into_iter()
        .map(|(id, file)| {
            Ok(Item {
                id: id.to_string(),
                request: Request { image: images.join(file), task: Task::Detect { categories: cats.clone() } },
                truth: Truth::Coco { image_id: id },
            })
        })
        .collect()
}

/// A COCO file's `images`: (`id`, `file_name`) of each, in file order; a missing list or an
/// image without either field is an error naming it.
fn coco_images<'a>(v: &'a Value, path: &Path) -> Result<Vec<(u64, &'a str)>, EvalError> {
    let imgs = v.get("images").and_then(Value::as_array).ok_or_else(|| fmt_err(path, "missing `images`".into()))?;
    imgs.iter()
        .enumerate()
        .map(|(i, im)| {
            let id = im
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| fmt_err(path, format!("images[{i}] has no integer `id`")))?;
            let file = im
                .get("file_name")
                .and_then(Value::as_str)
                .ok_or_else(|| fmt_err(path, format!("images[{i}] has no `file_name`")))?;
            Ok((id, file))
        })
        .collect()
}

/// What scoring COCO detections needs from the annotation file.
pub struct CocoScoringInfo {
    /// Category name -> id.
    pub category_ids: std::collections::HashMap<String, u64>,
    /// Image id -> `[width, height]`, for the images that give both: the reference scales the
    /// answer's normalized boxes by them (jefferyZhan/Griffon `eval/eval_detection.py`).
    pub sizes: std::collections::HashMap<u64, [u32; 2]>,
}

/// The category ids and image sizes of a COCO annotation file.
pub fn coco_scoring_info(annotations: &Path) -> Result<CocoScoringInfo, EvalError> {
    let v = read_json(annotations)?;
    let mut category_ids = std::collections::HashMap::new();
    for (i, c) in v.get("categories").and_then(Value::as_array).into_iter().flatten().enumerate() {
        match (c.get("name").and_then(Value::as_str), c.get("id").and_then(Value::as_u64)) {
            (Some(n), Some(id)) => {
                category_ids.insert(n.to_string(), id);
            }
            // its detections would silently count as unknown labels
            _ => return Err(fmt_err(annotations, format!("categories[{i}] needs a `name` and an integer `id`: {c}"))),
        }
    }
    let mut sizes = std::collections::HashMap::new();
    for (i, im) in v.get("images").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let size = image_size(im).map_err(|m| fmt_err(annotations, format!("images[{i}]: {m}")))?;
        if let (Some(id), Some(size)) = (im.get("id").and_then(Value::as_u64), size) {
            sizes.insert(id, size);
        }
    }
    Ok(CocoScoringInfo { category_ids, sizes })
}

/// An annotation's `width` and `height`, when it gives both; one given but not a positive
/// integer (which would place every box wrong) is an error. An integral float such as 640.0 is
/// taken as its integer.
fn image_size(v: &Value) -> Result<Option<[u32; 2]>, String> {
    let dim = |k: &str| {
        v.get(k).map(|x| {
            x.as_u64()
                .or_else(|| {
                    x.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX)).map(|f| f as u64)
                })
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n > 0)
        })
    };
    match (dim("width"), dim("height")) {
        (Some(Some(w)), Some(Some(h))) => Ok(Some([w, h])),
        (Some(None), _) | (_, Some(None)) => Err(format!("`width` and `height` must be positive integers: {v}")),
        _ => Ok(None),
    }
}

/// Shikra-style REC jsonl: `img_path` (or `image` / `image_path` / `file_name`), `expression`
/// (or `sentence`), `bbox` as pixel xyxy; `id` when present, else the line number.
pub fn refcoco(data: &Path, images: &Path) -> Result<Vec<Item>, EvalError> {
    read_jsonl(data)?
        .into_iter()
        .map(|(line, v)| {
            let img = str_field(&v, &["img_path", "image", "image_path", "file_name"])
                .ok_or_else(|| fmt_err(data, format!("line {line}: no image path (img_path)")))?;
            let expr = str_field(&v, &["expression", "sentence", "expr"])
                .ok_or_else(|| fmt_err(data, format!("line {line}: no `expression`")))?;
            let gt = box_field(&v, "bbox").ok_or_else(|| not_a_box(data, line, "`bbox`"))?;
            let size = image_size(&v).map_err(|m| fmt_err(data, format!("line {line}: {m}")))?;
            let id = v
                .get("id")
                .map(|x| x.to_string().trim_matches('"').to_string())
                .unwrap_or_else(|| format!("line{line}"));
            Ok(Item {
                id,
                request: Request { image: images.join(img), task: Task::Ground { expression: expr.to_string() } },
                truth: Truth::Rec { gt_box: gt, size },
            })
        })
        .collect()
}

/// REG jsonl: image, `bbox` (pixel xyxy), reference expressions in `expressions` / `refs`
/// (a list) or `expression` (a string or list).
pub fn reg(data: &Path, images: &Path) -> Result<Vec<Item>, EvalError> {
    read_jsonl(data)?
        .into_iter()
        .map(|(line, v)| {
            let img = str_field(&v, &["img_path", "image", "image_path", "file_name"])
                .ok_or_else(|| fmt_err(data, format!("line {line}: no image path (img_path)")))?;
            let b = box_field(&v, "bbox").ok_or_else(|| not_a_box(data, line, "`bbox`"))?;
            let refs: Vec<String> = match ["expressions", "refs", "expression"]
                .iter()
                .find_map(|k| Some((*k, v.get(*k).filter(|x| !x.is_null())?)))
            {
                Some((_, Value::String(s))) => vec![s.clone()],
                Some((k, Value::Array(a))) => a
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        x.as_str().map(str::to_string).ok_or_else(|| {
                            fmt_err(data, format!("line {line}: `{k}` entry {} is not a string: {x}", i + 1))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                Some((k, x)) => {
                    return Err(fmt_err(data, format!("line {line}: `{k}` is neither a string nor a list: {x}")))
                }
                None => vec![],
            };
            if refs.is_empty() {
                return Err(fmt_err(data, format!("line {line}: no reference expressions")));
            }
            let id = v
                .get("id")
                .map(|x| x.to_string().trim_matches('"').to_string())
                .unwrap_or_else(|| format!("line{line}"));
            Ok(Item {
                id,
                request: Request {
                    image: images.join(img),
                    task: Task::Describe { region: PixelBox::new(b[0], b[1], b[2], b[3]) },
                },
                truth: Truth::Reg { refs },
            })
        })
        .collect()
}

/// Phrases of a Flickr30K Entities sentence line: `[/EN#123/people A man]` groups. A group left
/// open or without a phrase is an error (its phrase would silently leave the evaluation).
pub fn parse_flickr_sentence(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("[/EN#") {
        let after = &rest[start + 5..];
        let end = after.find(']').ok_or_else(|| format!("an unclosed phrase group: {:?}", &rest[start..]))?;
        let inner = &after[..end];
        // "123/people/other A man in red"
        match inner.split_once(' ') {
            Some((tag, phrase)) if !phrase.trim().is_empty() => {
                let id = tag.split('/').next().unwrap_or("").to_string();
                out.push((id, phrase.trim().to_string()));
            }
            _ => return Err(format!("a phrase group without a phrase: {:?}", &rest[start..start + 5 + end + 1])),
        }
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// Boxes per entity id in a Flickr30K Entities annotation xml (`<object><name>ID</name>...
/// <bndbox><xmin>..</xmin><ymin>..</ymin><xmax>..</xmax><ymax>..</ymax></bndbox></object>`).
/// An object whose `<bndbox>` coordinates do not parse is an error (not skipped: its phrases
/// would silently leave the evaluation); objects without a `<bndbox>` (`<nobndbox>`) have no box.
pub fn parse_flickr_xml(xml: &str) -> Result<std::collections::HashMap<String, Vec<[f64; 4]>>, String> {
    fn tag<'a>(s: &'a str, t: &str) -> Option<&'a str> {
        let open = format!("<{t}>");
        let close = format!("</{t}>");
        let a = s.find(&open)? + open.len();
        let b = s[a..].find(&close)? + a;
        Some(s[a..b].trim())
    }
    // a truncated or empty file would read as an image without boxed phrases (its sentences
    // silently left the evaluation)
    let body = xml.trim();
    if !(body.contains("<annotation") && body.ends_with("</annotation>"))
        || body.matches("<object>").count() != body.matches("</object>").count()
    {
        return Err("not a complete annotation xml (<annotation> ... </annotation>, each <object> closed)".into());
    }
    let mut m: std::collections::HashMap<String, Vec<[f64; 4]>> = std::collections::HashMap::new();
    for obj in xml.split("<object>").skip(1) {
        let obj = obj.split("</object>").next().unwrap_or("");
        let Some(bb) = tag(obj, "bndbox") else { continue };
        let coords: Option<Vec<f64>> =
            ["xmin", "ymin", "xmax", "ymax"].iter().map(|t| tag(bb, t)?.parse().ok()).collect();
        let Some(c) = coords else {
            return Err(format!("an object's <bndbox> lacks a numeric xmin/ymin/xmax/ymax: {}", bb.trim()));
        };
        if !(c.iter().all(|x| x.is_finite()) && c[0] <= c[2] && c[1] <= c[3]) {
            return Err(format!("an object's <bndbox> is inverted (xmax < xmin or ymax < ymin): {}", bb.trim()));
        }
        // an object may carry several <name> ids
        let mut rest = obj;
        while let Some(i) = rest.find("<name>") {
            let a = i + 6;
            let Some(j) = rest[a..].find("</name>") else { break };
            m.entry(rest[a..a + j].trim().to_string()).or_default().push([c[0], c[1], c[2], c[3]]);
            rest = &rest[a + j..];
        }
    }
    Ok(m)
}

/// Flickr30K Entities: one item per sentence with at least one boxed phrase. `ids` limits the
/// images (e.g. the test split list); phrases whose entity has no box are left out, as MDETR's
/// evaluator does.
pub fn flickr(sentences: &Path, annotations: &Path, images: &Path, ids: Option<&Path>) -> Result<Vec<Item>, EvalError> {
    let mut image_ids: Vec<String> = match ids {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|source| EvalError::Io { path: f.into(), source })?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        None => std::fs::read_dir(sentences)
            .map_err(|source| EvalError::Io { path: sentences.into(), source })?
            .filter_map(|e| e.ok())
            // the sentence files (not .DS_Store and the like)
            .filter(|e| e.path().extension().is_some_and(|x| x == "txt"))
            .filter_map(|e| e.path().file_stem().map(|s| s.to_string_lossy().to_string()))
            .collect(),
    };
    image_ids.sort();
    let mut items = Vec::new();
    for id in image_ids {
        let sf = sentences.join(format!("{id}.txt"));
        let af = annotations.join(format!("{id}.xml"));
        let text = std::fs::read_to_string(&sf).map_err(|source| EvalError::Io { path: sf.clone(), source })?;
        let boxes = parse_flickr_xml(
            &std::fs::read_to_string(&af).map_err(|source| EvalError::Io { path: af.clone(), source })?,
        )
        .map_err(|m| fmt_err(&af, m))?;
        for (k, line) in text.lines().enumerate() {
            let phrases: Vec<PhraseTruth> = parse_flickr_sentence(line)
                .map_err(|m| fmt_err(&sf, format!("line {}: {m}", k + 1)))?
                .into_iter()
                .filter_map(|(eid, phrase)| boxes.get(&eid).map(|b| PhraseTruth { phrase, boxes: b.clone() }))
                .collect();
            if phrases.is_empty() {
                continue;
            }
            items.push(Item {
                id: format!("{id}_{k}"),
                request: Request {
                    image: {
                        // Flickr30K ships .jpg; other corpora in this layout may use .png
                        let jpg = images.join(format!("{id}.jpg"));
                        let png = images.join(format!("{id}.png"));
                        if !jpg.exists() && png.exists() {
                            png
                        } else {
                            jpg
                        }
                    },
                    task: Task::Phrases { phrases: phrases.iter().map(|p| p.phrase.clone()).collect() },
                },
                truth: Truth::Phrases { phrases },
            });
        }
    }
    Ok(items)
}

/// Counting: FSC-147's `annotation_FSC147_384.json` (object keyed by file name, with `points`
/// and `box_examples_coordinates`; the first exemplar is used) with an optional split file
/// (`Train_Test_Val_FSC_147.json` + split name), or a jsonl of
/// `{"image", "exemplar": [x1,y1,x2,y2], "count"}`.
pub fn count(data: &Path, images: &Path, split: Option<(&Path, &str)>) -> Result<Vec<Item>, EvalError> {
    // a split file selects FSC-147 images; the other layouts list their own (a split given with
    // them was ignored and every sample scored)
    let no_split = |layout: &str| match split {
        Some((f, _)) => Err(fmt_err(
            data,
            format!(
                "--split-file {} applies to FSC-147 annotations; this is {layout}, which has no splits",
                f.display()
            ),
        )),
        None => Ok(()),
    };
    if data.extension().is_some_and(|e| e == "jsonl") {
        no_split("a counting jsonl")?;
        return read_jsonl(data)?
            .into_iter()
            .map(|(line, v)| {
                let img = str_field(&v, &["image", "img_path", "image_path", "file_name"])
                    .ok_or_else(|| fmt_err(data, format!("line {line}: no `image`")))?;
                let e = box_field(&v, "exemplar").ok_or_else(|| not_a_box(data, line, "`exemplar`"))?;
                let c = v
                    .get("count")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| fmt_err(data, format!("line {line}: no numeric `count`")))?;
                if !(c >= 1.0 && c.fract() == 0.0) {
                    return Err(fmt_err(data, format!("line {line}: `count` must be a whole number >= 1, got {c}")));
                }
                let boxes = match v.get("boxes") {
                    None => None,
                    Some(b) => {
                        let list =
                            b.as_array().ok_or_else(|| fmt_err(data, format!("line {line}: `boxes` is not a list")))?;
                        let boxes = list
                            .iter()
                            .enumerate()
                            .map(|(k, x)| box_value(x).ok_or_else(|| not_a_box(data, line, &format!("`boxes`[{k}]"))))
                            .collect::<Result<Vec<_>, _>>()?;
                        if boxes.is_empty() {
                            return Err(fmt_err(
                                data,
                                format!("line {line}: `boxes` is empty (an exemplar has a class)"),
                            ));
                        }
                        if boxes.len() as f64 != c {
                            return Err(fmt_err(
                                data,
                                format!("line {line}: {} boxes for a count of {c}", boxes.len()),
                            ));
                        }
                        Some(boxes)
                    }
                };
                Ok(Item {
                    id: format!("{img}#{line}"),
                    request: Request {
                        image: images.join(img),
                        task: Task::Count { exemplar: Exemplar::BoxOnImage(PixelBox::new(e[0], e[1], e[2], e[3])) },
                    },
                    truth: Truth::Count { count: c, boxes },
                })
            })
            .collect();
    }
    let v = read_json(data)?;
    if v.get("images").is_some() && v.get("annotations").is_some() {
        no_split("an FSCD-LVIS (COCO-style) file")?;
        return fscd_count(data, &v, images);
    }
    let obj = v.as_object().ok_or_else(|| fmt_err(data, "expected an object keyed by image file name".into()))?;
    let mut names: Vec<String> = match split {
        Some((f, name)) => match read_json(f)?.get(name) {
            None => return Err(fmt_err(f, format!("no split `{name}`"))),
            Some(list) => list
                .as_array()
                .ok_or_else(|| fmt_err(f, format!("split `{name}` is not a list of image names")))?
                .clone(),
        }
        .iter()
        .map(|x| x.as_str().map(str::to_string).ok_or_else(|| fmt_err(f, format!("split `{name}`: {x} is not a name"))))
        .collect::<Result<_, _>>()?,
        None => obj.keys().cloned().collect(),
    };
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let a = obj.get(&name).ok_or_else(|| fmt_err(data, format!("{name}: not in the annotation file")))?;
            let points = a
                .get("points")
                .and_then(Value::as_array)
                .ok_or_else(|| fmt_err(data, format!("{name}: no `points`")))?;
            if points.is_empty() {
                return Err(fmt_err(data, format!("{name}: `points` is empty (a count of 0)")));
            }
            let ex = a
                .get("box_examples_coordinates")
                .and_then(Value::as_array)
                .and_then(|l| l.first())
                .and_then(Value::as_array)
                .ok_or_else(|| fmt_err(data, format!("{name}: no `box_examples_coordinates`")))?;
            let pts: Vec<(f64, f64)> = ex
                .iter()
                .map(|p| {
                    p.as_array()
                        .filter(|p| p.len() == 2)
                        .and_then(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                        .ok_or_else(|| fmt_err(data, format!("{name}: exemplar corner {p} is not [x, y]")))
                })
                .collect::<Result<_, _>>()?;
            if pts.len() < 2 {
                return Err(fmt_err(data, format!("{name}: the first exemplar has no corner points")));
            }
            let (x1, y1) = pts.iter().fold((f64::MAX, f64::MAX), |a, p| (a.0.min(p.0), a.1.min(p.1)));
            let (x2, y2) = pts.iter().fold((f64::MIN, f64::MIN), |a, p| (a.0.max(p.0), a.1.max(p.1)));
            Ok(Item {
                id: name.clone(),
                request: Request {
                    image: images.join(&name),
                    task: Task::Count { exemplar: Exemplar::BoxOnImage(PixelBox::new(x1, y1, x2, y2)) },
                },
                truth: Truth::Count { count: points.len() as f64, boxes: None },
            })
        })
        .collect()
}

/// FSCD-LVIS / FSCD-147 layout: a COCO instances file (`images`, `annotations` with `bbox`
/// x,y,w,h; the ground-truth count is the number of non-crowd annotations of an image) and its
/// exemplar file, found by replacing `instances` with `count` in the file name, whose
/// `annotations` carry `{"image_id", "boxes": [[x, y, w, h], ...]}`; the first exemplar is used.
fn fscd_count(data: &Path, v: &Value, images: &Path) -> Result<Vec<Item>, EvalError> {
    let name = data.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if !name.contains("instances") {
        return Err(fmt_err(data, "a COCO-style counting file must be named *instances*.json (its exemplars are in the *count*.json beside it)".into()));
    }
    let ex_path = data.with_file_name(name.replace("instances", "count"));
    let ex = read_json(&ex_path)?;
    let mut exemplar: std::collections::HashMap<u64, [f64; 4]> = std::collections::HashMap::new();
    for (i, a) in ex.get("annotations").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let id = a
            .get("image_id")
            .and_then(Value::as_u64)
            .ok_or_else(|| fmt_err(&ex_path, format!("annotations[{i}]: no image_id")))?;
        let b = a
            .get("boxes")
            .and_then(Value::as_array)
            .and_then(|l| l.first())
            .and_then(Value::as_array)
            .and_then(|b| (b.len() == 4).then(|| [b[0].as_f64(), b[1].as_f64(), b[2].as_f64(), b[3].as_f64()]))
            .and_then(|b| Some([b[0]?, b[1]?, b[2]?, b[3]?]))
            .ok_or_else(|| fmt_err(&ex_path, format!("annotations[{i}]: no exemplar `boxes` [[x, y, w, h], ...]")))?;
        exemplar.entry(id).or_insert([b[0], b[1], b[0] + b[2], b[1] + b[3]]);
    }
    let mut counts: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for (i, a) in v.get("annotations").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let id = a
            .get("image_id")
            .and_then(Value::as_u64)
            .ok_or_else(|| fmt_err(data, format!("annotations[{i}]: no integer `image_id`")))?;
        // pycocotools reads iscrowd as a truth value: 0 / 1, and false / true as JSON writes them
        let crowd = match a.get("iscrowd") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => match v.as_u64() {
                Some(n) => n != 0,
                None => {
                    return Err(fmt_err(
                        data,
                        format!("annotations[{i}]: `iscrowd` must be 0 / 1 or a boolean, got {v}"),
                    ))
                }
            },
        };
        if !crowd {
            *counts.entry(id).or_default() += 1;
        }
    }
    let mut items = Vec::new();
    for (id, file) in coco_images(v, data)? {
        let e = exemplar.get(&id).ok_or_else(|| fmt_err(&ex_path, format!("no exemplar for image_id {id}")))?;
        if e[2] < e[0] || e[3] < e[1] {
            return Err(fmt_err(&ex_path, format!("the exemplar of image_id {id} has a negative width or height")));
        }
        if !counts.contains_key(&id) {
            return Err(fmt_err(data, format!("image_id {id} has no (non-crowd) annotation: a count of 0")));
        }
        items.push(Item {
            id: id.to_string(),
            request: Request {
                image: images.join(file),
                task: Task::Count { exemplar: Exemplar::BoxOnImage(PixelBox::new(e[0], e[1], e[2], e[3])) },
            },
            truth: Truth::Count { count: *counts.get(&id).unwrap_or(&0) as f64, boxes: None },
        });
    }
    Ok(items)
}
