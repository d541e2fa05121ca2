//! The co-referring request: what the user asks for and how the target is referred to, turned
//! into the released instruction templates (shared/GRIFFON_FORMAT.md, "Instruction templates").
//! One API for the CLI and the server.

use crate::boxes::{NormBox, PixelBox};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Detection instruction used in evaluation (the category list is appended).
pub const DETECT_PROMPT: &str = "Examine the image for any objects from the category set. Report the coordinates of each detected object. The category set includes {categories}.";
/// Referring-expression comprehension.
pub const REC_PROMPT: &str = "Can you point out {expression} in the image and provide the coordinates of its location?";
/// Referring-expression generation (region description); the box is written bare, normalized.
pub const REG_PROMPT: &str = "Please generate a distinguishing description for the region {box} in the image.";
/// Visual-prompt counting with an exemplar.
pub const COUNT_PROMPT: &str = "In this image, find all objects similar to <region> and output their coordinates.";

/// Where an exemplar / region image comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Exemplar {
    /// A separate image file (an exemplar crop or a screenshot), used whole.
    Image(PathBuf),
    /// A box (pixels, xyxy) on the main image.
    BoxOnImage(PixelBox),
    /// A box (pixels, xyxy) on another image: cross-image co-referring.
    BoxOnOther { image: PathBuf, region: PixelBox },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Task {
    /// Find every object of the listed categories.
    Detect { categories: Vec<String> },
    /// REC: one expression -> the best box.
    Ground { expression: String },
    /// Phrase grounding: several phrases -> boxes per phrase.
    Phrases { phrases: Vec<String> },
    /// REG: a box (pixels, xyxy on the main image) -> a description.
    Describe { region: PixelBox },
    /// Count the objects like the exemplar.
    Count { exemplar: Exemplar },
    /// A free prompt; each `<region>` takes the next exemplar. With the one main image the
    /// reference's placeholder order (image, region, image, ...) allows one `<region>`, after
    /// the image's `<image>` (added at the start when the prompt has none).
    Chat { prompt: String, regions: Vec<Exemplar> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub image: PathBuf,
    pub task: Task,
}

/// One model call a request expands to.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The user text (without the `<image>\n` prefix, which the template step adds).
    pub user_text: String,
    /// Exemplars, in the order of the text's `<region>` markers.
    pub regions: Vec<Exemplar>,
    /// For phrase grounding: the phrase whose boxes this turn yields (labels them).
    pub label: Option<String>,
    /// Whether the answer is expected in the name-less box form.
    pub nameless: bool,
    /// For detection: the categories this turn asks about (its chunk of the list); empty otherwise.
    pub categories: Vec<String>,
}

/// How far past the image's edges a region to describe, or an exemplar box, may reach, in pixels
/// (a dataset's float box may end a fraction past the edge).
pub const REGION_SLOP_PX: f64 = 1.0;

/// The items trimmed, empty ones left out; an empty list is an error.
fn trimmed_list(items: &[String], what: &str) -> Result<Vec<String>, String> {
    let v: Vec<String> = items.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if v.is_empty() {
        return Err(format!("the {what} list is empty"));
    }
    Ok(v)
}

/// Text spliced into a prompt mid-sentence may not hold a placeholder (the image would be
/// spliced there).
fn check_placeholders(what: &str, s: &str) -> Result<(), String> {
    if s.contains("<image>") || s.contains("<region>") {
        return Err(format!("{what} {s:?} contains a placeholder (<image>, <region>)"));
    }
    Ok(())
}

/// An answer names a category or phrase on one line (the constrained grammar refuses a line
/// break in a name).
fn check_one_line(what: &str, s: &str) -> Result<(), String> {
    if s.contains(['\n', '\r']) {
        return Err(format!("{what} {s:?} contains a line break: an answer names it on one line"));
    }
    Ok(())
}

/// The categories trimmed, empty ones left out, a repeated one kept once where it first appears
/// (asked twice, its boxes would come back twice). The answer writes them as names, so the
/// characters its grammar reserves are refused.
fn clean_categories(items: &[String]) -> Result<Vec<String>, String> {
    let mut v = trimmed_list(items, "category")?;
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
    for s in &v {
        if s.contains(['&', '[', ']']) {
            return Err(format!("category {s:?} contains a character the answer grammar reserves (&, [, ])"));
        }
        check_placeholders("category", s)?;
        check_one_line("category", s)?;
    }
    Ok(v)
}

/// The phrases trimmed, empty ones left out. Each is asked as a referring expression and labels
/// its turn's box without being parsed from the answer, so `&`, `[` and `]` are allowed (a
/// Flickr30K phrase may read "a black & white shirt").
fn clean_phrases(items: &[String]) -> Result<Vec<String>, String> {
    let v = trimmed_list(items, "phrase")?;
    for s in &v {
        check_placeholders("phrase", s)?;
        check_one_line("phrase", s)?;
    }
    Ok(v)
}

/// The detection instruction for one chunk of categories.
pub fn detect_prompt(categories: &[String]) -> String {
    DETECT_PROMPT.replace("{categories}", &categories.join(", "))
}

pub fn rec_prompt(expression: &str) -> String {
    REC_PROMPT.replace("{expression}", expression)
}

pub fn reg_prompt(region: NormBox) -> String {
    REG_PROMPT.replace("{box}", &region.format())
}

/// The REG prompt with a visual prompt (`<region>`: an exemplar through the region encoder) in
/// place of the box's coordinates. Not a reference prompt: the synthetic stream's region naming
/// (train::synth) uses it to teach a from-scratch region path.
pub fn reg_region_prompt() -> String {
    REG_PROMPT.replace("{box}", "<region>")
}

impl Request {
    /// How many model calls (turns) the request makes: one per chunk of `chunk` categories, one
    /// per phrase, else one. Checks the lists as [`Request::turns`] does, without the image.
    pub fn turn_count(&self, chunk: usize) -> Result<usize, String> {
        match &self.task {
            Task::Detect { categories } => {
                let n = clean_categories(categories)?.len();
                match chunk {
                    0 => Err("the category chunk size must be at least 1".into()),
                    c => Ok(n.div_ceil(c)),
                }
            }
            Task::Phrases { phrases } => Ok(clean_phrases(phrases)?.len()),
            _ => Ok(1),
        }
    }

    /// Validates the request against the main image size and expands it into model turns.
    /// `chunk` bounds the categories per detection turn (long lists are split and merged).
    pub fn turns(&self, width: u32, height: u32, chunk: usize) -> Result<Vec<Turn>, String> {
        let turn = |text: String, regions: Vec<Exemplar>, label: Option<String>, nameless: bool| Turn {
            user_text: text,
            regions,
            label,
            nameless,
            categories: vec![],
        };
        let check_exemplar = |e: &Exemplar| -> Result<(), String> {
            match e {
                // (a float annotation a fraction past the edge, as a region's may be: the crop clamps it)
                Exemplar::BoxOnImage(b) => {
                    b.validate_within(width, height, REGION_SLOP_PX).map_err(|m| format!("exemplar box: {m}"))
                }
                Exemplar::BoxOnOther { .. } | Exemplar::Image(_) => Ok(()), // checked against their own image
            }
        };
        Ok(match &self.task {
            Task::Detect { categories } => {
                let cats = clean_categories(categories)?;
                if chunk == 0 {
                    return Err("the category chunk size must be at least 1".into());
                }
                cats.chunks(chunk)
                    .map(|c| Turn { categories: c.to_vec(), ..turn(detect_prompt(c), vec![], None, false) })
                    .collect()
            }
            Task::Ground { expression } => {
                let e = expression.trim();
                if e.is_empty() {
                    return Err("the referring expression is empty".into());
                }
                check_placeholders("the referring expression", e)?;
                vec![turn(rec_prompt(e), vec![], Some(e.to_string()), false)]
            }
            Task::Phrases { phrases } => {
                clean_phrases(phrases)?.into_iter().map(|p| turn(rec_prompt(&p), vec![], Some(p), false)).collect()
            }
            Task::Describe { region } => {
                // a dataset's float box may end a fraction of a pixel past the edge (its prompt
                // is clamped to [0, 1], as the reference's formatting does)
                region.validate_within(width, height, REGION_SLOP_PX).map_err(|m| format!("region box: {m}"))?;
                vec![turn(reg_prompt(region.to_norm(width, height)), vec![], None, false)]
            }
            Task::Count { exemplar } => {
                check_exemplar(exemplar)?;
                vec![turn(COUNT_PROMPT.to_string(), vec![exemplar.clone()], None, true)]
            }
            Task::Chat { prompt, regions } => {
                if prompt.trim().is_empty() {
                    return Err("the prompt is empty".into());
                }
                let n = prompt.matches("<region>").count();
                if n != regions.len() {
                    return Err(format!(
                        "the prompt has {n} <region> marker(s) but {} region exemplar(s) were given",
                        regions.len()
                    ));
                }
                // checked here, before any image is read: the reference fills placeholders by
                // position (image, region, image, ...), so with one main image a prompt holds at
                // most one <region>, after the image
                crate::prompt::check_marker_order(&crate::template::with_image_marker(prompt)).map_err(|e| e.0)?;
                for r in regions {
                    check_exemplar(r)?;
                }
                vec![turn(prompt.clone(), regions.clone(), None, false)]
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(task: Task) -> Request {
        Request { image: "a.jpg".into(), task }
    }

    #[test]
    fn detection_chunks() {
        let cats: Vec<String> = ["person", " car ", "", "dog"].iter().map(|s| s.to_string()).collect();
        let t = req(Task::Detect { categories: cats }).turns(100, 100, 2).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t[0].user_text.ends_with("The category set includes person, car."));
        assert!(t[1].user_text.ends_with("includes dog."));
        assert_eq!(t[0].categories, ["person", "car"]);
        assert_eq!(t[1].categories, ["dog"]);
        // a repeated category is asked once, where it first appears
        let cats: Vec<String> = ["dog", "cat", " dog", "cat", "bird"].iter().map(|s| s.to_string()).collect();
        let t = req(Task::Detect { categories: cats }).turns(100, 100, 2).unwrap();
        assert_eq!(t.iter().map(|t| t.categories.clone()).collect::<Vec<_>>(), [vec!["dog", "cat"], vec!["bird"]]);
        assert!(t[1].user_text.ends_with("includes bird."));
        // phrases keep their repeats (a caption may name two different "a man")
        let t = req(Task::Phrases { phrases: vec!["a man".into(), "a man".into()] }).turns(100, 100, 80).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t[0].categories.is_empty());
        // turn_count agrees with turns, without the image
        for (task, chunk) in [
            (Task::Detect { categories: ["dog", "cat", " dog", "cat", "bird"].map(String::from).to_vec() }, 2),
            (Task::Phrases { phrases: vec!["a man".into(), "a man".into(), "a dog".into()] }, 80),
            (Task::Ground { expression: "the cat".into() }, 80),
        ] {
            let r = req(task);
            assert_eq!(r.turn_count(chunk).unwrap(), r.turns(100, 100, chunk).unwrap().len());
        }
        assert!(req(Task::Detect { categories: vec![" ".into()] }).turn_count(80).unwrap_err().contains("empty"));
    }

    #[test]
    fn reg_box_is_normalized_bare() {
        let t = req(Task::Describe { region: PixelBox::new(10.0, 20.0, 50.0, 100.0) }).turns(200, 100, 80).unwrap();
        assert_eq!(
            t[0].user_text,
            "Please generate a distinguishing description for the region [0.050,0.200,0.250,1.000] in the image."
        );
    }

    #[test]
    fn bad_requests() {
        let e = req(Task::Ground { expression: "the <image> icon".into() }).turns(10, 10, 80).unwrap_err();
        assert!(e.contains("placeholder"), "{e}");
        assert!(req(Task::Detect { categories: vec![" ".into()] }).turns(10, 10, 80).unwrap_err().contains("empty"));
        assert!(req(Task::Detect { categories: vec!["a&b".into()] })
            .turns(10, 10, 80)
            .unwrap_err()
            .contains("reserves"));
        for bad in
            [Task::Detect { categories: vec!["traffic\nlight".into()] }, Task::Phrases { phrases: vec!["a\rb".into()] }]
        {
            assert!(req(bad).turns(10, 10, 80).unwrap_err().contains("line break"));
        }
        // a phrase is not parsed from the answer: the grammar's characters are allowed in it
        let shirt = req(Task::Phrases { phrases: vec!["a black & white shirt".into(), "[sic]".into()] });
        assert_eq!(shirt.turns(10, 10, 80).unwrap()[0].label.as_deref(), Some("a black & white shirt"));
        assert!(req(Task::Phrases { phrases: vec!["the <region>".into()] })
            .turns(10, 10, 80)
            .unwrap_err()
            .contains("placeholder"));
        let outside = req(Task::Describe { region: PixelBox::new(0.0, 0.0, 20.0, 5.0) }).turns(10, 10, 80);
        assert!(outside.unwrap_err().contains("outside"));
        // up to a pixel past the edge is taken (a float annotation's slop), clamped in the prompt
        let edge = req(Task::Describe { region: PixelBox::new(-0.5, 0.0, 10.8, 5.0) }).turns(10, 10, 80).unwrap();
        assert!(edge[0].user_text.contains("[0.000,0.000,1.000,0.500]"), "{}", edge[0].user_text);
        let past = req(Task::Describe { region: PixelBox::new(0.0, 0.0, 11.5, 5.0) }).turns(10, 10, 80);
        assert!(past.unwrap_err().contains("outside"));
        let zero =
            req(Task::Count { exemplar: Exemplar::BoxOnImage(PixelBox::new(2.0, 2.0, 2.0, 5.0)) }).turns(10, 10, 80);
        assert!(zero.unwrap_err().contains("zero"));
        // an exemplar box gets the same slop (the crop clamps it), no more
        let ex = |b| req(Task::Count { exemplar: Exemplar::BoxOnImage(b) }).turns(10, 10, 80);
        assert!(ex(PixelBox::new(-0.3, 0.0, 10.4, 5.0)).is_ok());
        assert!(ex(PixelBox::new(0.0, 0.0, 11.5, 5.0)).unwrap_err().contains("exemplar box"));
        let chat = req(Task::Chat { prompt: "x <region>".into(), regions: vec![] }).turns(10, 10, 80);
        assert!(chat.unwrap_err().contains("1 <region>"));
        // two regions need two main images: refused before any image is read, naming the order
        let two = vec![Exemplar::Image("a.png".into()), Exemplar::Image("b.png".into())];
        let chat = req(Task::Chat { prompt: "compare <region> and <region>".into(), regions: two }).turns(10, 10, 80);
        let e = chat.unwrap_err();
        assert!(e.contains("placeholder 3 of the prompt is written <region>"), "{e}");
        let chat =
            req(Task::Chat { prompt: "<region> on <image>".into(), regions: vec![Exemplar::Image("a.png".into())] });
        assert!(chat.turns(10, 10, 80).unwrap_err().contains("placeholder 1"));
        let one = vec![Exemplar::Image("a.png".into())];
        assert!(req(Task::Chat { prompt: "what is <region>?".into(), regions: one }).turns(10, 10, 80).is_ok());
        assert!(req(Task::Ground { expression: "  ".into() }).turns(10, 10, 80).is_err());
    }

    #[test]
    fn count_uses_region_marker() {
        let t = req(Task::Count { exemplar: Exemplar::Image("e.png".into()) }).turns(10, 10, 80).unwrap();
        assert_eq!(t[0].user_text, COUNT_PROMPT);
        assert!(t[0].nameless);
        assert_eq!(t[0].regions.len(), 1);
    }
}
