//! One anti-spoof network with the crop rule and input encoding it was trained with.

use std::path::Path;

use candle_core::{Module, Result, Tensor};
use image::RgbImage;

use crate::imgproc::{
    antispoof_crop_box, bgr_tensor, reflect_square_box, resize_bilinear, resize_square_reflect101,
    rgb_tensor, Window,
};
use crate::models::minifasnet::{InputEncoding, MiniFasNet, Variant};

/// Weight file of each variant inside the model directory.
pub fn weights_file(variant: Variant) -> &'static str {
    match variant {
        Variant::V2 => "minifasnet_v2_2.7_80x80.safetensors",
        Variant::V1Se => "minifasnet_v1se_4.0_80x80.safetensors",
        Variant::V2Se128 => "minifasnet_v2se_128.safetensors",
    }
}

/// A network's input for one face: the crop rectangle and the encoded tensor.
pub struct ModelInput {
    /// Inclusive `[l, t, r, b]` in image pixels; may extend past the image where the crop rule
    /// mirrors pixels in.
    pub crop: [i32; 4],
    pub tensor: Tensor,
}

/// A loaded anti-spoof network.
pub struct AntiSpoofModel {
    net: MiniFasNet,
}

impl AntiSpoofModel {
    /// Loads `variant` from its file in `model_dir`.
    pub fn load(model_dir: &Path, variant: Variant) -> Result<Self> {
        let vb = crate::models::load_weights(model_dir.join(weights_file(variant)))?;
        Ok(Self {
            net: MiniFasNet::new(vb, variant)?,
        })
    }

    /// Which network this is.
    pub fn variant(&self) -> Variant {
        self.net.variant()
    }

    /// Cuts and encodes the network's input for the face box `[x1, y1, x2, y2]`:
    /// - MiniFASNetV2 / V1SE: upstream's context crop ([`antispoof_crop_box`]), OpenCV bilinear
    ///   resize to 80x80, BGR 0..255;
    /// - MiniFASNetV2-SE 128: the 1.5x square with mirrored borders ([`reflect_square_box`]),
    ///   OpenCV area / Lanczos resize to 128x128, RGB 0..1.
    pub fn input(&self, image: &RgbImage, bbox: [f32; 4]) -> Result<ModelInput> {
        let variant = self.variant();
        let size = variant.input_size();
        let (w, h) = image.dimensions();
        match variant.input_encoding() {
            InputEncoding::BgrRaw => {
                let [x1, y1, x2, y2] = bbox;
                let crop =
                    antispoof_crop_box(w, h, [x1, y1, x2 - x1, y2 - y1], variant.crop_scale());
                let clamp = |v: i32, max: u32| v.clamp(0, max as i32 - 1) as u32;
                let (l, t, r, b) = (
                    clamp(crop[0], w),
                    clamp(crop[1], h),
                    clamp(crop[2], w),
                    clamp(crop[3], h),
                );
                let window = Window {
                    x: l,
                    y: t,
                    w: r - l + 1,
                    h: b - t + 1,
                };
                let pixels = resize_bilinear(image, window, size as u32, size as u32);
                Ok(ModelInput {
                    crop,
                    tensor: bgr_tensor(&pixels, size, size, [0.0; 3])?,
                })
            }
            InputEncoding::RgbUnit => {
                let square = reflect_square_box(bbox, variant.crop_scale());
                let [x, y, s] = square;
                let pixels = resize_square_reflect101(image, square, size as u32);
                Ok(ModelInput {
                    crop: [x, y, x + s - 1, y + s - 1],
                    tensor: rgb_tensor(&pixels, size, size, 1.0 / 255.0)?,
                })
            }
        }
    }

    /// The network's live probability for an input from [`AntiSpoofModel::input`].
    pub fn live_probability(&self, input: &ModelInput) -> Result<f32> {
        let logits = self.net.forward(&input.tensor)?;
        Ok(self.net.live_probability(&logits)?[0])
    }
}
