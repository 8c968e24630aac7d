//! Images for diffuse: pixels to tensors and back, image datasets (IDX files, folders of
//! PNG/JPEG) and the diffusers-compatible UNet2d. Depends on `diffuse-core`, never on the
//! other modality crates.
//!
//! Filled in by the image work; it exists now so the workspace has its final shape.
