//! SAM2 (Meta's facebookresearch/sam2), single-image path. So far: the prompt encoder; the
//! Hiera image encoder and the mask decoder are the next steps of the SAM2 issue.

pub mod prompt_encoder;
