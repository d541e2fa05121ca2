//! Plain types and logic for Griffon v2 / Griffon-G with no tensors.
//!
//! * [`template`]: the conversation templates the released models were trained with.
//! * [`prompt`]: turning a user text with `<image>` / `<region>` markers into token chunks and
//!   visual placeholders, exactly as the reference `tokenizer_image_token` does.
//! * [`boxes`]: normalized and pixel boxes, IoU.
//! * [`answer`]: the answer grammar (format and a tolerant parser).
//! * [`confidence`]: per-box confidence from decoding probabilities.

pub mod answer;
pub mod boxes;
pub mod confidence;
pub mod grammar;
pub mod prompt;
pub mod request;
pub mod template;

pub use answer::{format_boxes, format_instances, parse_answer, Dropped, Instance, ParsedAnswer};
pub use boxes::{iou_xyxy, NormBox, PixelBox};
pub use prompt::{
    assemble_ids, check_marker_order, check_visual_counts, split_placeholders, Piece, Placeholder, PromptError,
};
pub use request::{Exemplar, Request, Task, Turn};
pub use template::Template;
