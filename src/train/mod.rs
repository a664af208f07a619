//! Training objectives as a library (candle autograd), for fine-tuning code that lives outside
//! the inference path. Nothing here runs during `perceptio` inference.

pub mod depth_loss;
