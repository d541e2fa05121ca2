//! Dataset readers on small hand-made files in each standard layout.

use griffon_core::{Exemplar, Task};
use griffon_eval::datasets::{count, flickr, parse_flickr_sentence, parse_flickr_xml, refcoco, Truth};
use std::path::Path;

#[test]
fn flickr_markup() {
    let p = parse_flickr_sentence("[/EN#18/people A man] in [/EN#19/clothing an orange hat] starring at something .")
        .unwrap();
    assert_eq!(p, vec![("18".to_string(), "A man".to_string()), ("19".to_string(), "an orange hat".to_string())]);
    let xml = "<annotation><object><name>18</name><name>20</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>\
               <object><name>19</name><nobndbox>1</nobndbox></object></annotation>";
    let m = parse_flickr_xml(xml).unwrap();
    assert_eq!(m["18"], vec![[1.0, 2.0, 30.0, 40.0]]);
    assert_eq!(m["20"], vec![[1.0, 2.0, 30.0, 40.0]]);
    assert!(!m.contains_key("19"));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("S")).unwrap();
    std::fs::create_dir_all(tmp.path().join("A")).unwrap();
    std::fs::write(tmp.path().join("S/5.txt"), "[/EN#18/people A man] in [/EN#19/clothing an orange hat] .\n").unwrap();
    std::fs::write(tmp.path().join("A/5.xml"), xml).unwrap();
    std::fs::write(tmp.path().join("S/.DS_Store"), "not a sentence file").unwrap();
    let items = flickr(&tmp.path().join("S"), &tmp.path().join("A"), Path::new("img"), None).unwrap();
    assert_eq!(items.len(), 1);
    match &items[0].truth {
        Truth::Phrases { phrases } => assert_eq!(phrases.len(), 1, "the phrase without a box is left out"),
        t => panic!("{t:?}"),
    }
}

#[test]
fn refcoco_errors_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("r.jsonl");
    std::fs::write(&f, "{\"img_path\": \"a.jpg\", \"expression\": \"x\", \"bbox\": [1, 2, 3, 4]}\n{\"img_path\": \"a.jpg\", \"bbox\": [1, 2, 3, 4]}\n").unwrap();
    let e = refcoco(&f, Path::new("img")).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("expression"), "{e}");
    // a byte-order mark is skipped; a JSON list in place of jsonl is named
    std::fs::write(&f, "\u{feff}{\"img_path\": \"a.jpg\", \"expression\": \"x\", \"bbox\": [1, 2, 3, 4]}\n").unwrap();
    assert_eq!(refcoco(&f, Path::new("img")).unwrap().len(), 1);
    std::fs::write(&f, "[{\"img_path\": \"a.jpg\", \"expression\": \"x\", \"bbox\": [1, 2, 3, 4]}]\n").unwrap();
    let e = refcoco(&f, Path::new("img")).unwrap_err().to_string();
    assert!(e.contains("line 1: expected one JSON object per line, found a JSON array"), "{e}");
    // an inverted ground-truth box is an error naming the line
    std::fs::write(&f, "{\"img_path\": \"a.jpg\", \"expression\": \"x\", \"bbox\": [50, 50, 10, 10]}\n").unwrap();
    let e = refcoco(&f, Path::new("img")).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("x1 <= x2 and y1 <= y2"), "{e}");
    let xml = "<annotation><object><name>1</name><bndbox><xmin>40</xmin><ymin>1</ymin><xmax>10</xmax><ymax>5</ymax></bndbox></object></annotation>";
    let e = griffon_eval::datasets::parse_flickr_xml(xml).unwrap_err();
    assert!(e.contains("inverted"), "{e}");
}

#[test]
fn counting_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    // FSC-147
    let fsc = serde_json::json!({"1.jpg": {"points": [[1, 1], [2, 2], [3, 3]],
        "box_examples_coordinates": [[[10, 20], [30, 20], [30, 40], [10, 40]]]}});
    std::fs::write(tmp.path().join("fsc.json"), fsc.to_string()).unwrap();
    let items = count(&tmp.path().join("fsc.json"), Path::new("img"), None).unwrap();
    assert_eq!(items[0].truth, Truth::Count { count: 3.0, boxes: None });
    match &items[0].request.task {
        Task::Count { exemplar: Exemplar::BoxOnImage(b) } => assert_eq!(b.as_array(), [10.0, 20.0, 30.0, 40.0]),
        t => panic!("{t:?}"),
    }
    // FSCD-LVIS: instances + count files
    let inst = serde_json::json!({"images": [{"id": 7, "file_name": "7.jpg"}],
        "annotations": [{"image_id": 7, "bbox": [0, 0, 5, 5]}, {"image_id": 7, "bbox": [5, 5, 5, 5]}, {"image_id": 7, "bbox": [1, 1, 2, 2], "iscrowd": 1}]});
    let cnt = serde_json::json!({"annotations": [{"image_id": 7, "boxes": [[2, 3, 10, 20], [0, 0, 1, 1]]}]});
    std::fs::write(tmp.path().join("unseen_instances_test.json"), inst.to_string()).unwrap();
    std::fs::write(tmp.path().join("unseen_count_test.json"), cnt.to_string()).unwrap();
    let items = count(&tmp.path().join("unseen_instances_test.json"), Path::new("img"), None).unwrap();
    assert_eq!(items[0].truth, Truth::Count { count: 2.0, boxes: None });
    // a split file selects FSC-147 images only: with another layout it is an error, not ignored
    let split = tmp.path().join("split.json");
    std::fs::write(&split, r#"{"test": ["7.jpg"]}"#).unwrap();
    std::fs::write(tmp.path().join("c.jsonl"), "{\"image\": \"7.jpg\", \"exemplar\": [0, 0, 5, 5], \"count\": 2}\n")
        .unwrap();
    // FSC-147 with a split whose entry is not a list: named as such (was "no split")
    std::fs::write(&split, r#"{"test": "1.jpg"}"#).unwrap();
    let e = count(&tmp.path().join("fsc.json"), Path::new("img"), Some((&split, "test"))).unwrap_err().to_string();
    assert!(e.contains("split `test` is not a list of image names"), "{e}");
    for f in ["unseen_instances_test.json", "c.jsonl"] {
        let e = count(&tmp.path().join(f), Path::new("img"), Some((&split, "test"))).unwrap_err().to_string();
        assert!(e.contains("applies to FSC-147 annotations"), "{f}: {e}");
    }
    match &items[0].request.task {
        Task::Count { exemplar: Exemplar::BoxOnImage(b) } => assert_eq!(b.as_array(), [2.0, 3.0, 12.0, 23.0]),
        t => panic!("{t:?}"),
    }
    // an image whose every annotation is a crowd region (a count of 0): an error when read
    let inst = serde_json::json!({"images": [{"id": 7, "file_name": "7.jpg"}],
        "annotations": [{"image_id": 7, "bbox": [1, 1, 2, 2], "iscrowd": 1}]});
    std::fs::write(tmp.path().join("unseen_instances_test.json"), inst.to_string()).unwrap();
    let e = count(&tmp.path().join("unseen_instances_test.json"), Path::new("img"), None).unwrap_err().to_string();
    assert!(e.contains("image_id 7 has no (non-crowd) annotation"), "{e}");
    // FSC-147 with no points
    std::fs::write(
        tmp.path().join("fsc0.json"),
        serde_json::json!({"1.jpg": {"points": [],
        "box_examples_coordinates": [[[10, 20], [30, 20], [30, 40], [10, 40]]]}})
        .to_string(),
    )
    .unwrap();
    let e = count(&tmp.path().join("fsc0.json"), Path::new("img"), None).unwrap_err().to_string();
    assert!(e.contains("1.jpg: `points` is empty"), "{e}");
    // iscrowd as JSON booleans counts as 0 / 1 does; another type is an error naming it
    for (crowd, want) in [(serde_json::json!(true), 2.0), (serde_json::json!(false), 3.0)] {
        let inst = serde_json::json!({"images": [{"id": 7, "file_name": "7.jpg"}],
            "annotations": [{"image_id": 7, "bbox": [0, 0, 5, 5]}, {"image_id": 7, "bbox": [5, 5, 5, 5]}, {"image_id": 7, "bbox": [1, 1, 2, 2], "iscrowd": crowd}]});
        std::fs::write(tmp.path().join("unseen_instances_test.json"), inst.to_string()).unwrap();
        let items = count(&tmp.path().join("unseen_instances_test.json"), Path::new("img"), None).unwrap();
        assert_eq!(items[0].truth, Truth::Count { count: want, boxes: None }, "iscrowd {crowd}");
    }
    let inst = serde_json::json!({"images": [{"id": 7, "file_name": "7.jpg"}],
        "annotations": [{"image_id": 7, "bbox": [0, 0, 5, 5], "iscrowd": "yes"}]});
    std::fs::write(tmp.path().join("unseen_instances_test.json"), inst.to_string()).unwrap();
    let e = count(&tmp.path().join("unseen_instances_test.json"), Path::new("img"), None).unwrap_err().to_string();
    assert!(e.contains("annotations[0]: `iscrowd` must be 0 / 1 or a boolean"), "{e}");
    // an `images` entry that is not a list, or an image without its file: errors, not no items
    for (images, want) in
        [(serde_json::json!(5), "missing `images`"), (serde_json::json!([{"id": 7}]), "images[0] has no `file_name`")]
    {
        let bad = serde_json::json!({"images": images, "annotations": []});
        std::fs::write(tmp.path().join("unseen_instances_test.json"), bad.to_string()).unwrap();
        let e = count(&tmp.path().join("unseen_instances_test.json"), Path::new("img"), None).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    // jsonl (griffon synth's count.jsonl; count_any.jsonl adds the class's boxes)
    let f = tmp.path().join("c.jsonl");
    std::fs::write(&f, "{\"image\": \"a.png\", \"exemplar\": [1, 2, 3, 4], \"count\": 1}\n{\"image\": \"b.png\", \"exemplar\": [1, 2, 3, 4], \"count\": 2, \"boxes\": [[1, 2, 3, 4], [5, 6, 7, 8]]}\n").unwrap();
    let items = count(&f, Path::new("img"), None).unwrap();
    assert_eq!(items[0].truth, Truth::Count { count: 1.0, boxes: None });
    assert_eq!(
        items[1].truth,
        Truth::Count { count: 2.0, boxes: Some(vec![[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]) }
    );
    // boxes that disagree with the count, or are not boxes: errors naming the line
    std::fs::write(&f, "{\"image\": \"a.png\", \"exemplar\": [1, 2, 3, 4], \"count\": 2, \"boxes\": [[1, 2, 3, 4]]}\n")
        .unwrap();
    let e = count(&f, Path::new("img"), None).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("1 boxes for a count of 2"), "{e}");
    std::fs::write(&f, "{\"image\": \"a.png\", \"exemplar\": [1, 2, 3, 4], \"count\": 1, \"boxes\": [[1, 2, 3]]}\n")
        .unwrap();
    let e = count(&f, Path::new("img"), None).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("`boxes`[0]"), "{e}");
    std::fs::write(&f, "{\"image\": \"a.png\", \"exemplar\": [1, 2, 3, 4], \"count\": 1, \"boxes\": 5}\n").unwrap();
    let e = count(&f, Path::new("img"), None).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("not a list"), "{e}");
    // inverted boxes and counts that are not whole numbers >= 1: errors when the file is read,
    // not after the model has run
    for (line, want) in [
        (
            r#"{"image": "a.png", "exemplar": [3, 2, 1, 4], "count": 1}"#,
            "`exemplar` is not [x1,y1,x2,y2] with x1 <= x2",
        ),
        (
            r#"{"image": "a.png", "exemplar": [1, 2, 3, 4], "count": 2.5}"#,
            "`count` must be a whole number >= 1, got 2.5",
        ),
        (r#"{"image": "a.png", "exemplar": [1, 2, 3, 4], "count": 0}"#, "`count` must be a whole number >= 1, got 0"),
        (r#"{"image": "a.png", "exemplar": [1, 2, 3, 4], "count": 1, "boxes": [[5, 6, 1, 8]]}"#, "`boxes`[0] is not"),
    ] {
        std::fs::write(&f, format!("{line}\n")).unwrap();
        let e = count(&f, Path::new("img"), None).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains(want), "{line}: {e}");
    }
    std::fs::write(&f, "{\"image\": \"a.png\", \"exemplar\": [1, 2, 3, 4], \"count\": 1, \"boxes\": []}\n").unwrap();
    let e = count(&f, Path::new("img"), None).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("empty"), "{e}");
}

#[test]
fn malformed_parts_of_a_record_are_errors_not_skipped() {
    // a Flickr object whose box does not parse would silently drop its phrases
    let bad = "<annotation><object><name>18</name><bndbox><xmin>1</xmin><ymin>two</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>";
    let e = parse_flickr_xml(bad).unwrap_err();
    assert!(e.contains("<bndbox>") && e.contains("two"), "{e}");
    // so would a truncated or empty annotation file
    for cut in ["", "<annotation><object>", "<annotation><object><name>18</name>", "<annotation><object></annotation>"]
    {
        let e = parse_flickr_xml(cut).unwrap_err();
        assert!(e.contains("not a complete annotation xml"), "{cut:?}: {e}");
    }
    // a phrase group left open, or without its phrase
    let e = parse_flickr_sentence("[/EN#18/people A man] in [/EN#19/clothing an orange hat").unwrap_err();
    assert!(e.contains("unclosed") && e.contains("EN#19"), "{e}");
    let e = parse_flickr_sentence("[/EN#18/people] runs").unwrap_err();
    assert!(e.contains("without a phrase") && e.contains("EN#18"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    // a reference expression that is not a string
    let f = tmp.path().join("reg.jsonl");
    std::fs::write(&f, "{\"img_path\": \"a.jpg\", \"bbox\": [1, 2, 3, 4], \"expressions\": [\"a red cup\", 7]}\n")
        .unwrap();
    let e = griffon_eval::datasets::reg(&f, Path::new("img")).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("entry 2"), "{e}");
    // an FSC-147 exemplar corner that is not a point
    let f = tmp.path().join("annotation_FSC147_384.json");
    std::fs::write(
        &f,
        r#"{"1.jpg": {"points": [[1, 1]], "box_examples_coordinates": [[[0, 0], [0, "9"], [9, 9], [9, 0]]]}}"#,
    )
    .unwrap();
    let e = count(&f, Path::new("img"), None).unwrap_err().to_string();
    assert!(e.contains("1.jpg") && e.contains("corner"), "{e}");
}

/// The COCO reader runs the scorer's ground-truth checks before any model does.
#[test]
fn coco_ground_truth_is_checked_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("instances.json");
    let gt = serde_json::json!({"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0}]});
    std::fs::write(&f, gt.to_string()).unwrap();
    let e = griffon_eval::datasets::coco(&f, Path::new("img")).unwrap_err().to_string();
    assert!(e.contains("image_id 2 is not one of `images`"), "{e}");
}
