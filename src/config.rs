//! Run configuration: TOML with every field defaulting to the official recipe
//! (`dino-recipe.md` §1). Unknown keys and invalid values are errors naming the key.

use std::path::Path;

use dino_pipeline::augment::ViewSpec;
use serde::{Deserialize, Serialize};

use crate::model::{HeadConfig, VitConfig};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub augment: AugmentConfig,
    pub optim: OptimConfig,
    pub loss: LossConfig,
    pub run: RunConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// vit_tiny | vit_small | vit_base | custom (then embed_dim, depth, num_heads are used)
    pub arch: String,
    pub patch_size: usize,
    /// the side the positional grid is learned for (the global crop size in the recipe)
    pub img_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub drop_path_rate: f64,
    pub out_dim: usize,
    pub head_hidden_dim: usize,
    pub head_bottleneck_dim: usize,
    pub norm_last_layer: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub split: String,
    /// per device
    pub batch_size: usize,
    pub global_crop_size: u32,
    pub global_crops_scale: (f64, f64),
    pub local_crop_size: u32,
    pub local_crops_number: usize,
    pub local_crops_scale: (f64, f64),
    /// decode/augment threads; 0 = one per core
    pub workers: usize,
    pub shuffle_window: usize,
    pub dct_scaling: bool,
}

/// The multi-crop augmentation (`dino-recipe.md` §1.2). The defaults are the recipe's, tuned
/// for 224 px crops: blur sigmas are in output pixels, so small crops want a smaller range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    pub flip_p: f64,
    /// probability of the colour jitter, and its strengths (torchvision's `ColorJitter`)
    pub color_jitter_p: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
    pub grayscale_p: f64,
    /// Gaussian blur sigma range, drawn uniformly, and the blur probability of each view
    pub blur_sigma: (f64, f64),
    pub global_1_blur_p: f64,
    pub global_2_blur_p: f64,
    pub local_blur_p: f64,
    /// the recipe solarizes the second global view only
    pub global_2_solarize_p: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub epochs: u64,
    /// peak learning rate for a global batch of 256 (linear scaling rule)
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: u64,
    pub weight_decay: f64,
    pub weight_decay_end: f64,
    /// per-tensor gradient norm cap; 0 disables
    pub clip_grad: f64,
    pub freeze_last_layer: u64,
    pub momentum_teacher: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub warmup_teacher_temp: f64,
    pub teacher_temp: f64,
    pub warmup_teacher_temp_epochs: u64,
    pub student_temp: f64,
    pub center_momentum: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub seed: u64,
    /// write a metrics line every this many steps
    pub log_every: u64,
    /// checkpoint every this many steps (0: only at the end of each epoch)
    pub checkpoint_every: u64,
    /// checkpoints kept on disk
    pub keep_checkpoints: usize,
    /// stop after this many steps in total (0: run all epochs); for smoke runs and tests
    pub max_steps: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: "vit_small".into(),
            patch_size: 16,
            img_size: 224,
            embed_dim: 384,
            depth: 12,
            num_heads: 6,
            drop_path_rate: 0.1,
            out_dim: 65536,
            head_hidden_dim: 2048,
            head_bottleneck_dim: 256,
            norm_last_layer: true,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            split: "train".into(),
            batch_size: 64,
            global_crop_size: 224,
            global_crops_scale: (0.4, 1.0),
            local_crop_size: 96,
            local_crops_number: 8,
            local_crops_scale: (0.05, 0.4),
            workers: 0,
            shuffle_window: 4,
            dct_scaling: false,
        }
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        let global_1 = ViewSpec::global_1();
        let global_2 = ViewSpec::global_2();
        Self {
            flip_p: global_1.flip_p,
            color_jitter_p: global_1.jitter_p,
            brightness: global_1.brightness,
            contrast: global_1.contrast,
            saturation: global_1.saturation,
            hue: global_1.hue,
            grayscale_p: global_1.grayscale_p,
            blur_sigma: global_1.blur_sigma,
            global_1_blur_p: global_1.blur_p,
            global_2_blur_p: global_2.blur_p,
            local_blur_p: ViewSpec::local().blur_p,
            global_2_solarize_p: global_2.solarize_p,
        }
    }
}

impl AugmentConfig {
    /// The config's view specs: [global 1, global 2] and the local one (sizes and scales
    /// are the data section's, set by the caller).
    pub fn views(&self) -> ([ViewSpec; 2], ViewSpec) {
        let spec = |mut view: ViewSpec, blur_p: f64, solarize_p: f64| {
            view.flip_p = self.flip_p;
            view.jitter_p = self.color_jitter_p;
            view.brightness = self.brightness;
            view.contrast = self.contrast;
            view.saturation = self.saturation;
            view.hue = self.hue;
            view.grayscale_p = self.grayscale_p;
            view.blur_sigma = self.blur_sigma;
            view.blur_p = blur_p;
            view.solarize_p = solarize_p;
            view
        };
        (
            [
                spec(ViewSpec::global_1(), self.global_1_blur_p, 0.0),
                spec(
                    ViewSpec::global_2(),
                    self.global_2_blur_p,
                    self.global_2_solarize_p,
                ),
            ],
            spec(ViewSpec::local(), self.local_blur_p, 0.0),
        )
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, why: String| Err(ConfigError::Invalid { key, why });
        for (key, p) in [
            ("augment.flip_p", self.flip_p),
            ("augment.color_jitter_p", self.color_jitter_p),
            ("augment.grayscale_p", self.grayscale_p),
            ("augment.global_1_blur_p", self.global_1_blur_p),
            ("augment.global_2_blur_p", self.global_2_blur_p),
            ("augment.local_blur_p", self.local_blur_p),
            ("augment.global_2_solarize_p", self.global_2_solarize_p),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return invalid(key, format!("{p} is a probability: use a value in [0, 1]"));
            }
        }
        for (key, strength) in [
            ("augment.brightness", self.brightness),
            ("augment.contrast", self.contrast),
            ("augment.saturation", self.saturation),
        ] {
            if !(0.0..).contains(&strength) {
                return invalid(key, format!("{strength} must be non-negative"));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return invalid("augment.hue", format!("{} must be in [0, 0.5]", self.hue));
        }
        let (lo, hi) = self.blur_sigma;
        if !(0.0 < lo && lo <= hi) {
            return invalid(
                "augment.blur_sigma",
                format!(
                    "({lo}, {hi}) must satisfy 0 < lo <= hi; set the blur probabilities to 0 to turn blur off"
                ),
            );
        }
        Ok(())
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            lr: 0.0005,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            clip_grad: 3.0,
            freeze_last_layer: 1,
            momentum_teacher: 0.996,
        }
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
            student_temp: 0.1,
            center_momentum: 0.9,
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            log_every: 10,
            checkpoint_every: 0,
            keep_checkpoints: 3,
            max_steps: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {why}")]
    Invalid { key: &'static str, why: String },
    #[error("bad override `{0}`: expected KEY=VALUE, e.g. optim.epochs=5")]
    Override(String),
}

impl Config {
    /// The file (or the recipe defaults) with `overrides` (`section.key=value`, the value in
    /// TOML syntax, a bare word taken as a string) applied, then validated.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let origin = path.map_or("defaults".to_string(), |p| p.display().to_string());
        Self::parse(&text, &origin, overrides)
    }

    /// `text` (TOML, named `origin` in errors) with `overrides` applied, then validated.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(format!("{origin}: {e}")))?;
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ConfigError::Override(item.clone()))?;
            let value = parse_value(value.trim());
            let mut parts: Vec<&str> = key.trim().split('.').collect();
            let last = parts
                .pop()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| ConfigError::Override(item.clone()))?;
            let mut node = &mut table;
            for part in parts {
                node = node
                    .entry(part)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| ConfigError::Override(item.clone()))?;
            }
            node.insert(last.to_string(), value);
        }
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(format!("{origin}: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serializes")
    }

    pub fn vit(&self) -> VitConfig {
        let m = &self.model;
        VitConfig::named(&m.arch, m.patch_size, m.img_size).unwrap_or(VitConfig {
            embed_dim: m.embed_dim,
            depth: m.depth,
            num_heads: m.num_heads,
            mlp_ratio: 4,
            patch_size: m.patch_size,
            img_size: m.img_size,
        })
    }

    pub fn head(&self) -> HeadConfig {
        HeadConfig {
            out_dim: self.model.out_dim,
            hidden_dim: self.model.head_hidden_dim,
            bottleneck_dim: self.model.head_bottleneck_dim,
            norm_last_layer: self.model.norm_last_layer,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, why: String| Err(ConfigError::Invalid { key, why });
        let m = &self.model;
        let known = crate::model::ARCHS.iter().any(|(name, ..)| *name == m.arch);
        if !known && m.arch != "custom" {
            return invalid(
                "model.arch",
                format!("`{}`: use vit_tiny, vit_small, vit_base or custom", m.arch),
            );
        }
        let vit = self.vit();
        if vit.embed_dim == 0
            || vit.depth == 0
            || vit.num_heads == 0
            || !vit.embed_dim.is_multiple_of(vit.num_heads)
        {
            return invalid(
                "model.embed_dim",
                format!(
                    "{} must be a positive multiple of model.num_heads ({})",
                    vit.embed_dim, vit.num_heads
                ),
            );
        }
        if m.patch_size == 0 || !m.img_size.is_multiple_of(m.patch_size) {
            return invalid(
                "model.img_size",
                format!(
                    "{} must be a multiple of model.patch_size ({})",
                    m.img_size, m.patch_size
                ),
            );
        }
        let d = &self.data;
        for (key, size) in [
            ("data.global_crop_size", d.global_crop_size),
            ("data.local_crop_size", d.local_crop_size),
        ] {
            if size == 0 || !(size as usize).is_multiple_of(m.patch_size) {
                return invalid(
                    key,
                    format!(
                        "{size} must be a positive multiple of model.patch_size ({})",
                        m.patch_size
                    ),
                );
            }
        }
        for (key, (lo, hi)) in [
            ("data.global_crops_scale", d.global_crops_scale),
            ("data.local_crops_scale", d.local_crops_scale),
        ] {
            if !(0.0 < lo && lo <= hi && hi <= 1.0) {
                return invalid(key, format!("({lo}, {hi}) must satisfy 0 < lo <= hi <= 1"));
            }
        }
        if d.batch_size == 0 {
            return invalid("data.batch_size", "must be at least 1".into());
        }
        if m.out_dim < 2 || m.head_hidden_dim == 0 || m.head_bottleneck_dim == 0 {
            return invalid(
                "model.out_dim",
                "head sizes must be positive and out_dim at least 2".into(),
            );
        }
        if !(0.0..1.0).contains(&m.drop_path_rate) {
            return invalid(
                "model.drop_path_rate",
                format!("{} must be in [0, 1)", m.drop_path_rate),
            );
        }
        let o = &self.optim;
        if o.epochs == 0 {
            return invalid("optim.epochs", "must be at least 1".into());
        }
        if o.warmup_epochs > o.epochs {
            return invalid(
                "optim.warmup_epochs",
                format!("{} exceeds optim.epochs ({})", o.warmup_epochs, o.epochs),
            );
        }
        if !(o.lr > 0.0 && o.min_lr >= 0.0) {
            return invalid(
                "optim.lr",
                "lr must be positive and min_lr non-negative".into(),
            );
        }
        if !(0.0..=1.0).contains(&o.momentum_teacher) {
            return invalid(
                "optim.momentum_teacher",
                format!("{} must be in [0, 1]", o.momentum_teacher),
            );
        }
        if o.clip_grad < 0.0 || o.weight_decay < 0.0 || o.weight_decay_end < 0.0 {
            return invalid(
                "optim.clip_grad",
                "clip_grad and weight decays must be non-negative".into(),
            );
        }
        let l = &self.loss;
        if !(l.student_temp > 0.0 && l.teacher_temp > 0.0 && l.warmup_teacher_temp > 0.0) {
            return invalid("loss.teacher_temp", "temperatures must be positive".into());
        }
        if l.warmup_teacher_temp_epochs > o.epochs {
            return invalid(
                "loss.warmup_teacher_temp_epochs",
                format!(
                    "{} exceeds optim.epochs ({})",
                    l.warmup_teacher_temp_epochs, o.epochs
                ),
            );
        }
        if !(0.0..=1.0).contains(&l.center_momentum) {
            return invalid(
                "loss.center_momentum",
                format!("{} must be in [0, 1]", l.center_momentum),
            );
        }
        self.augment.validate()?;
        if self.run.log_every == 0 {
            return invalid("run.log_every", "must be at least 1".into());
        }
        if self.run.keep_checkpoints == 0 {
            return invalid("run.keep_checkpoints", "must be at least 1".into());
        }
        Ok(())
    }
}

fn parse_value(text: &str) -> toml::Value {
    // parse as the right-hand side of a TOML assignment; a bare word is a string
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listed_recipe_config_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/vit_small_imagenet.toml");
        assert_eq!(Config::load(Some(&path), &[]).unwrap(), Config::default());
    }

    #[test]
    fn default_augmentation_is_the_recipes() {
        let (global, local) = AugmentConfig::default().views();
        assert_eq!(global, [ViewSpec::global_1(), ViewSpec::global_2()]);
        assert_eq!(local, ViewSpec::local());
    }

    #[test]
    fn augment_keys_reach_their_views() {
        let cfg = Config::parse(
            "[augment]\nblur_sigma = [0.1, 0.3]\nglobal_1_blur_p = 0.5\nglobal_2_blur_p = 0.25\n\
             local_blur_p = 0.125\nglobal_2_solarize_p = 0.0625\nflip_p = 0.0\nhue = 0.0\n\
             color_jitter_p = 0.3\nbrightness = 0.1\ncontrast = 0.2\nsaturation = 0.0\n\
             grayscale_p = 0.0",
            "test",
            &[],
        )
        .unwrap();
        let ([g1, g2], local) = cfg.augment.views();
        assert_eq!((g1.blur_p, g2.blur_p, local.blur_p), (0.5, 0.25, 0.125));
        assert_eq!(
            (g1.solarize_p, g2.solarize_p, local.solarize_p),
            (0.0, 0.0625, 0.0)
        );
        for view in [&g1, &g2, &local] {
            assert_eq!(view.blur_sigma, (0.1, 0.3));
            assert_eq!((view.flip_p, view.hue, view.grayscale_p), (0.0, 0.0, 0.0));
            assert_eq!((view.jitter_p, view.brightness), (0.3, 0.1));
            assert_eq!((view.contrast, view.saturation), (0.2, 0.0));
        }
        // sizes, scales and ratios are not the augment section's
        assert_eq!((g1.size, g1.scale, g1.ratio), {
            let r = ViewSpec::global_1();
            (r.size, r.scale, r.ratio)
        });
        assert_eq!(local.scale, ViewSpec::local().scale);
    }

    #[test]
    fn bad_augment_values_name_the_key() {
        for (set, key) in [
            ("augment.local_blur_p=1.5", "augment.local_blur_p"),
            ("augment.blur_sigma=[0.0, 1.0]", "augment.blur_sigma"),
            ("augment.blur_sigma=[2.0, 1.0]", "augment.blur_sigma"),
            ("augment.hue=0.7", "augment.hue"),
            ("augment.contrast=-0.1", "augment.contrast"),
        ] {
            let err = Config::parse("", "test", &[set.to_string()]).unwrap_err();
            assert!(err.to_string().contains(key), "{set}: {err}");
        }
    }
}
