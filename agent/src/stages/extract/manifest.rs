//! The extract manifest (`manifest.json` beside the frames): one entry per written frame
//! with its 1-based index, source frame number, pts in seconds and path relative to the
//! data root, plus the settings and source facts that produced it. Later stages read it;
//! it is written atomically, after every frame file exists.

use serde::{Deserialize, Serialize};

use dataminer_wire::ExtractConfig;

pub const FILE_NAME: &str = "manifest.json";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub video_id: i64,
    /// The extracted file, relative to the data root.
    pub video_path: String,
    pub settings: ExtractConfig,
    pub source: SourceFacts,
    pub frames: Vec<FrameEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFacts {
    /// The video stream's duration (the container's when the stream has none), seconds.
    pub duration_s: Option<f64>,
    /// The duration the container's header claims, seconds; may be far from the stream's.
    #[serde(default)]
    pub container_duration_s: Option<f64>,
    pub fps: Option<f64>,
    pub start_time_s: f64,
    pub width: Option<i64>,
    pub height: Option<i64>,
    /// Frames the decoder produced (the whole video unless the frame cap stopped it early).
    pub frames_decoded: u64,
    /// True when `max_frames_per_video` ended the extraction before the end of the video.
    pub capped: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameEntry {
    /// 1-based, as in `frame_000001.jpg`.
    pub index: u32,
    /// 0-based number of the decoded source frame.
    pub source_frame: u64,
    pub pts_s: f64,
    pub path: String,
}

pub fn frame_file_name(index: u32) -> String {
    format!("frame_{index:06}.jpg")
}
