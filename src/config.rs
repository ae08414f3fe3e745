//! Run configuration: TOML with every field defaulting to the official recipe
//! (`dino-recipe.md` §1). Unknown keys and invalid values are errors naming the key.

use std::path::Path;

use dino_pipeline::augment::ViewSpec;
use serde::{Deserialize, Serialize};

use crate::model::{BackboneKind, HeadConfig, ResNetConfig, VitConfig};
use crate::precision::Precision;

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
    /// vit_tiny | vit_small | vit_base | custom (a ViT: then embed_dim, depth and num_heads
    /// are required) | resnet50 | resnet101 | resnet152 | resnet (then resnet_layers is
    /// required)
    pub arch: String,
    /// ViTs only
    pub patch_size: usize,
    /// the side the positional grid is learned for (the global crop size in the recipe);
    /// also the side k-NN evaluates at
    pub img_size: usize,
    /// The ViT's shape: a named arch fixes them (an explicit value must agree with it);
    /// after parsing they always hold the effective values.
    pub embed_dim: Option<usize>,
    pub depth: Option<usize>,
    pub num_heads: Option<usize>,
    /// A ResNet's bottleneck blocks per stage and stem width (torchvision's 64): a named
    /// arch fixes them; after parsing they hold the effective values.
    pub resnet_layers: Option<[usize; 4]>,
    pub resnet_width: Option<usize>,
    /// stochastic depth, ViTs only (as the official code, a ResNet ignores it)
    pub drop_path_rate: f64,
    pub out_dim: usize,
    pub head_hidden_dim: usize,
    pub head_bottleneck_dim: usize,
    pub norm_last_layer: bool,
    /// batch norm between the head's MLP layers (the official `use_bn_in_head`)
    pub use_bn_in_head: bool,
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
    /// adamw (the ViT recipe) | sgd (the ResNet recipe, momentum 0.9) | lars (the released
    /// ResNet-50's; eta 0.001)
    pub optimizer: crate::optim::Rule,
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
    /// compute threads (the rayon pool of the CPU kernels), and the loader's workers unless
    /// `data.workers` is set; 0 = one per core. The two share the cores: on 2 cores, 2 of
    /// each measured as fast as 1 loader worker (the loader needs a fraction of a core).
    pub threads: usize,
    /// "fp32", or "bf16": the networks' matmuls, convolutions and attention in bf16, with
    /// f32 master weights, optimizer state, teacher, centre, loss and normalization
    /// statistics
    pub precision: Precision,
    /// machines taking part in the run (`--nodes`); each runs `dino-stream train` with the
    /// same config and its own `node_rank`, and trains on all the devices it is given
    pub nodes: usize,
    /// this machine's index among the nodes (`--node-rank`); node 0 starts the coordinator
    /// and writes the checkpoints and metrics
    pub node_rank: usize,
    /// HOST:PORT of the coordinator, on node 0 (`--coordinator`); needed with several nodes
    pub coordinator: String,
    /// seconds a device waits for the others at a step's all-reduce before the run stops:
    /// a device or node that died or hangs ends the run instead of stalling it
    pub collective_timeout: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: "vit_small".into(),
            patch_size: 16,
            img_size: 224,
            // taken from the arch when the config is parsed
            embed_dim: None,
            depth: None,
            num_heads: None,
            resnet_layers: None,
            resnet_width: None,
            drop_path_rate: 0.1,
            out_dim: 65536,
            head_hidden_dim: 2048,
            head_bottleneck_dim: 256,
            norm_last_layer: true,
            use_bn_in_head: false,
        }
    }
}

impl ModelConfig {
    /// The backbone family `arch` names (validated when the config was parsed).
    pub fn kind(&self) -> BackboneKind {
        BackboneKind::of(&self.arch).expect("a parsed config names a known arch")
    }

    /// The network's shape in words, for messages.
    pub fn describe(&self) -> String {
        match self.kind() {
            BackboneKind::Vit => {
                let v = self.vit();
                format!(
                    "{} / patch {} (embed {}, depth {}, {} heads)",
                    self.arch, v.patch_size, v.embed_dim, v.depth, v.num_heads
                )
            }
            BackboneKind::ResNet => {
                let r = self.resnet();
                format!("{} (blocks {:?}, width {})", self.arch, r.layers, r.width)
            }
        }
    }

    /// The ResNet's shape (the config has been resolved).
    pub fn resnet(&self) -> ResNetConfig {
        ResNetConfig {
            layers: self
                .resnet_layers
                .expect("a parsed config holds the ResNet's shape"),
            width: self
                .resnet_width
                .expect("a parsed config holds the ResNet's shape"),
        }
    }

    /// The ViT's shape (the config has been resolved: every shape key holds a value).
    pub fn vit(&self) -> VitConfig {
        let m = self;
        let get = |v: Option<usize>| v.expect("a parsed config holds the ViT's shape");
        VitConfig {
            embed_dim: get(m.embed_dim),
            depth: get(m.depth),
            num_heads: get(m.num_heads),
            mlp_ratio: 4,
            patch_size: m.patch_size,
            img_size: m.img_size,
        }
    }

    pub fn head(&self) -> HeadConfig {
        HeadConfig {
            out_dim: self.out_dim,
            hidden_dim: self.head_hidden_dim,
            bottleneck_dim: self.head_bottleneck_dim,
            norm_last_layer: self.norm_last_layer,
            use_bn: self.use_bn_in_head,
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
            non_negative(key, strength)?;
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return invalid("augment.hue", format!("{} must be in [0, 0.5]", self.hue));
        }
        let (lo, hi) = self.blur_sigma;
        if !(0.0 < lo && lo <= hi && hi.is_finite()) {
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
            optimizer: crate::optim::Rule::AdamW,
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
            threads: 0,
            precision: Precision::Fp32,
            nodes: 1,
            node_rank: 0,
            coordinator: String::new(),
            collective_timeout: 600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {err}")]
    Read { path: String, err: std::io::Error },
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
            Some(path) => std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
                path: path.display().to_string(),
                err,
            })?,
            None => String::new(),
        };
        let origin = path.map_or("defaults".to_string(), |p| p.display().to_string());
        Self::parse(&text, &origin, overrides)
    }

    /// `text` (TOML, named `origin` in errors) with `overrides` applied, then validated. An
    /// error in an override names the override, not the file.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(format!("{origin}: {e}")))?;
        Self::from_table(table.clone()).map_err(|e| in_origin(e, origin))?;
        for item in overrides {
            apply_override(&mut table, item)?;
            Self::from_table(table.clone()).map_err(|e| in_origin(e, &format!("--set {item}")))?;
        }
        let mut config = Self::from_table(table).map_err(|e| in_origin(e, origin))?;
        config.resolve()?;
        config.validate()?;
        Ok(config)
    }

    /// The config a checkpoint or run folder saved. Older versions wrote embed_dim, depth and
    /// num_heads for named archs too, where they were ignored: for a named arch they are
    /// dropped before parsing, as those versions read them.
    pub fn parse_saved(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(format!("{origin}: {e}")))?;
        if let Some(model) = table.get_mut("model").and_then(|m| m.as_table_mut()) {
            let named = model
                .get("arch")
                .and_then(|a| a.as_str())
                .is_some_and(|arch| VitConfig::named(arch, 1, 1).is_some());
            if named {
                for key in ["embed_dim", "depth", "num_heads"] {
                    model.remove(key);
                }
            }
        }
        Self::parse(
            &toml::to_string(&table).expect("a table serializes"),
            origin,
            &[],
        )
    }

    fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serializes")
    }

    /// Fills the backbone's shape from a named arch, checking explicit values against it;
    /// a custom arch needs them, and keys of the other family are refused.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        let m = &mut self.model;
        let kind = BackboneKind::of(&m.arch).ok_or_else(|| ConfigError::Invalid {
            key: "model.arch",
            why: format!(
                "`{}`: use vit_tiny, vit_small, vit_base, custom (a ViT), resnet50, \
                 resnet101, resnet152 or resnet (a ResNet)",
                m.arch
            ),
        })?;
        let other_family = match kind {
            BackboneKind::Vit => vec![
                ("model.resnet_layers", m.resnet_layers.is_some()),
                ("model.resnet_width", m.resnet_width.is_some()),
            ],
            BackboneKind::ResNet => vec![
                ("model.embed_dim", m.embed_dim.is_some()),
                ("model.depth", m.depth.is_some()),
                ("model.num_heads", m.num_heads.is_some()),
            ],
        };
        if let Some((key, _)) = other_family.iter().find(|(_, given)| *given) {
            return Err(ConfigError::Invalid {
                key,
                why: format!("does not apply to arch `{}`; drop the key", m.arch),
            });
        }
        if kind == BackboneKind::ResNet {
            return Self::resolve_resnet(m);
        }
        let named = VitConfig::named(&m.arch, m.patch_size, m.img_size);
        let arch = m.arch.clone();
        for (key, value, fixed) in [
            (
                "model.embed_dim",
                &mut m.embed_dim,
                named.as_ref().map(|v| v.embed_dim),
            ),
            ("model.depth", &mut m.depth, named.as_ref().map(|v| v.depth)),
            (
                "model.num_heads",
                &mut m.num_heads,
                named.as_ref().map(|v| v.num_heads),
            ),
        ] {
            match (fixed, *value) {
                (Some(fixed), Some(given)) if given != fixed => {
                    return Err(ConfigError::Invalid {
                        key,
                        why: format!(
                            "{given} contradicts arch `{arch}`, whose value is {fixed}; drop the \
                             key, or set model.arch = \"custom\""
                        ),
                    });
                }
                (Some(fixed), _) => *value = Some(fixed),
                (None, None) => {
                    return Err(ConfigError::Invalid {
                        key,
                        why: "required with arch = \"custom\"".into(),
                    });
                }
                (None, Some(_)) => {}
            }
        }
        Ok(())
    }

    fn resolve_resnet(m: &mut ModelConfig) -> Result<(), ConfigError> {
        let arch = m.arch.clone();
        let contradicts = |given: String, fixed: String| {
            format!(
                "{given} contradicts arch `{arch}`, whose value is {fixed}; drop the key, or \
                 set model.arch = \"resnet\""
            )
        };
        match ResNetConfig::named(&m.arch) {
            Some(named) => {
                if let Some(given) = m.resnet_layers.filter(|l| *l != named.layers) {
                    return Err(ConfigError::Invalid {
                        key: "model.resnet_layers",
                        why: contradicts(format!("{given:?}"), format!("{:?}", named.layers)),
                    });
                }
                if let Some(given) = m.resnet_width.filter(|w| *w != named.width) {
                    return Err(ConfigError::Invalid {
                        key: "model.resnet_width",
                        why: contradicts(given.to_string(), named.width.to_string()),
                    });
                }
                m.resnet_layers = Some(named.layers);
                m.resnet_width = Some(named.width);
            }
            None => {
                if m.resnet_layers.is_none() {
                    return Err(ConfigError::Invalid {
                        key: "model.resnet_layers",
                        why: "required with arch = \"resnet\" (blocks per stage, e.g. \
                              [3, 4, 6, 3])"
                            .into(),
                    });
                }
                m.resnet_width.get_or_insert(64);
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.model;
        // the smallest crop side a backbone takes: a ViT's patch, and for a ResNet the 32x
        // reduction (the last stage's batch statistics need more than one value per channel)
        let min_side = match m.kind() {
            BackboneKind::Vit => {
                let vit = m.vit();
                within("model.patch_size", m.patch_size, 1, MAX_SIDE)?;
                within("model.img_size", m.img_size, m.patch_size, MAX_SIDE)?;
                multiple(
                    "model.img_size",
                    m.img_size,
                    "model.patch_size",
                    m.patch_size,
                )?;
                within("model.embed_dim", vit.embed_dim, 1, 1 << 16)?;
                within("model.depth", vit.depth, 1, 1024)?;
                within("model.num_heads", vit.num_heads, 1, vit.embed_dim)?;
                multiple(
                    "model.embed_dim",
                    vit.embed_dim,
                    "model.num_heads",
                    vit.num_heads,
                )?;
                m.patch_size
            }
            BackboneKind::ResNet => {
                let r = m.resnet();
                within("model.resnet_width", r.width, 1, 1 << 12)?;
                for blocks in r.layers {
                    within("model.resnet_layers", blocks, 1, 256)?;
                }
                within("model.img_size", m.img_size, 32, MAX_SIDE)?;
                32
            }
        };
        within("model.out_dim", m.out_dim, 2, 1 << 22)?;
        within("model.head_hidden_dim", m.head_hidden_dim, 1, 1 << 16)?;
        within(
            "model.head_bottleneck_dim",
            m.head_bottleneck_dim,
            1,
            1 << 16,
        )?;
        probability_below_one("model.drop_path_rate", m.drop_path_rate)?;

        let d = &self.data;
        within("data.batch_size", d.batch_size, 1, 1 << 16)?;
        for (key, size) in [
            ("data.global_crop_size", d.global_crop_size as usize),
            ("data.local_crop_size", d.local_crop_size as usize),
        ] {
            within(key, size, min_side, MAX_SIDE)?;
            if m.kind() == BackboneKind::Vit {
                multiple(key, size, "model.patch_size", m.patch_size)?;
            }
        }
        within("data.local_crops_number", d.local_crops_number, 0, 64)?;
        within("data.workers", d.workers, 0, MAX_WORKERS)?;
        within("data.shuffle_window", d.shuffle_window, 1, 1 << 20)?;
        for (key, (lo, hi)) in [
            ("data.global_crops_scale", d.global_crops_scale),
            ("data.local_crops_scale", d.local_crops_scale),
        ] {
            if !(0.0 < lo && lo <= hi && hi <= 1.0) {
                return invalid(key, format!("({lo}, {hi}) must satisfy 0 < lo <= hi <= 1"));
            }
        }
        let views = |size: u32| (size as u128).pow(2) * 3;
        let batch_bytes = d.batch_size as u128
            * (2 * views(d.global_crop_size)
                + d.local_crops_number as u128 * views(d.local_crop_size));
        if batch_bytes > MAX_BATCH_BYTES {
            return invalid(
                "data.batch_size",
                format!(
                    "a batch of these crops takes {:.1} GiB of host memory (limit {} GiB); \
                     lower data.batch_size or the crop sizes",
                    batch_bytes as f64 / (1u64 << 30) as f64,
                    MAX_BATCH_BYTES >> 30
                ),
            );
        }

        let o = &self.optim;
        within("optim.epochs", o.epochs as usize, 1, MAX_EPOCHS)?;
        within(
            "optim.warmup_epochs",
            o.warmup_epochs as usize,
            0,
            o.epochs as usize,
        )?;
        within(
            "optim.freeze_last_layer",
            o.freeze_last_layer as usize,
            0,
            o.epochs as usize,
        )?;
        positive("optim.lr", o.lr)?;
        non_negative("optim.min_lr", o.min_lr)?;
        non_negative("optim.weight_decay", o.weight_decay)?;
        non_negative("optim.weight_decay_end", o.weight_decay_end)?;
        non_negative("optim.clip_grad", o.clip_grad)?;
        probability("optim.momentum_teacher", o.momentum_teacher)?;

        let l = &self.loss;
        positive("loss.student_temp", l.student_temp)?;
        positive("loss.teacher_temp", l.teacher_temp)?;
        positive("loss.warmup_teacher_temp", l.warmup_teacher_temp)?;
        within(
            "loss.warmup_teacher_temp_epochs",
            l.warmup_teacher_temp_epochs as usize,
            0,
            o.epochs as usize,
        )?;
        probability("loss.center_momentum", l.center_momentum)?;

        self.augment.validate()?;
        if self.run.log_every == 0 {
            return invalid("run.log_every", "must be at least 1".into());
        }
        within(
            "run.keep_checkpoints",
            self.run.keep_checkpoints,
            1,
            1 << 16,
        )?;
        within("run.threads", self.run.threads, 0, MAX_WORKERS)?;
        within("run.nodes", self.run.nodes, 1, MAX_WORKERS)?;
        within("run.node_rank", self.run.node_rank, 0, self.run.nodes - 1)?;
        within(
            "run.collective_timeout",
            self.run.collective_timeout as usize,
            1,
            86_400,
        )?;
        let addr = &self.run.coordinator;
        let host_port = addr.rsplit_once(':');
        if !addr.is_empty()
            && !host_port.is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return invalid(
                "run.coordinator",
                format!("`{addr}`: expected HOST:PORT, e.g. 10.0.0.1:29500"),
            );
        }
        if self.run.nodes > 1 && self.run.coordinator.is_empty() {
            return invalid(
                "run.coordinator",
                format!(
                    "a run on {} nodes needs the coordinator's HOST:PORT (node 0's address), \
                     e.g. --coordinator 10.0.0.1:29500",
                    self.run.nodes
                ),
            );
        }
        Ok(())
    }

    /// `run.threads` with 0 resolved to the cores this process may use.
    pub fn threads(&self) -> usize {
        match self.run.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Bounds that keep sizes, counts and allocations sane: beyond them a value is a typo, and
/// would overflow or exhaust memory instead of failing clearly.
const MAX_SIDE: usize = 4096;
const MAX_WORKERS: usize = 1024;
const MAX_EPOCHS: usize = 1_000_000;
const MAX_BATCH_BYTES: u128 = 32 << 30;

fn invalid<T>(key: &'static str, why: String) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid { key, why })
}

fn within(key: &'static str, value: usize, lo: usize, hi: usize) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        invalid(key, format!("{value} must be in {lo}..={hi}"))
    }
}

fn multiple(key: &'static str, value: usize, of_key: &str, of: usize) -> Result<(), ConfigError> {
    if of > 0 && value.is_multiple_of(of) {
        Ok(())
    } else {
        invalid(
            key,
            format!("{value} must be a multiple of {of_key} ({of})"),
        )
    }
}

fn positive(key: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        invalid(key, format!("{value} must be a positive finite number"))
    }
}

fn non_negative(key: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        invalid(key, format!("{value} must be a non-negative finite number"))
    }
}

fn probability(key: &'static str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        invalid(key, format!("{value} must be in [0, 1]"))
    }
}

fn probability_below_one(key: &'static str, value: f64) -> Result<(), ConfigError> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        invalid(key, format!("{value} must be in [0, 1)"))
    }
}

/// A parse error of the merged table, attributed to the file or the override that caused it.
fn in_origin(e: ConfigError, origin: &str) -> ConfigError {
    match e {
        ConfigError::Parse(why) => ConfigError::Parse(format!("{origin}: {why}")),
        other => other,
    }
}

/// Sets `section.key = value` in `table` (the value in TOML syntax, a bare word a string).
fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::Override(item.to_string());
    let (key, value) = item.split_once('=').ok_or_else(bad)?;
    let value = parse_value(value.trim());
    let mut parts: Vec<&str> = key.trim().split('.').collect();
    let last = parts.pop().filter(|k| !k.is_empty()).ok_or_else(bad)?;
    let mut node = table;
    for part in parts {
        node = node
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(bad)?;
    }
    node.insert(last.to_string(), value);
    Ok(())
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
        assert_eq!(
            Config::load(Some(&path), &[]).unwrap(),
            Config::load(None, &[]).unwrap()
        );
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
