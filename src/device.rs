//! Backends, devices and backbones, named once.
//!
//! Everything that runs a network is generic over one of two backend bounds: an
//! [`InferenceBackend`] (forward passes: knn, attention maps, export checks, the teacher) and
//! a [`TrainingBackend`] (an autodiff backend over an inference one: the student). A backend
//! extension (fused ops, mixed precision) adds its bound to these two traits and nowhere
//! else. The binary picks the backend (`Flex` on the CPU, always built; `Cuda` with the `cuda`
//! feature) and the backbone family at run time, in [`run_training`] and [`run_inference`].

use std::fmt;
use std::str::FromStr;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::fused::FusedOps;
use crate::model::{Backbone, BackboneKind, ResNet, VisionTransformer};

/// The ops a forward pass needs: Burn's and the fused ones.
pub trait InferenceBackend: FusedOps {}
impl<B: FusedOps> InferenceBackend for B {}

/// The ops a training step needs: autodiff over an inference backend.
pub trait TrainingBackend:
    InferenceBackend + AutodiffBackend<InnerBackend: InferenceBackend>
{
}
impl<A> TrainingBackend for A where
    A: InferenceBackend + AutodiffBackend<InnerBackend: InferenceBackend>
{
}

/// A backbone the student can be: its gradient-free copy (the teacher) is a backbone of the
/// inner backend.
pub trait TrainableBackbone<A: TrainingBackend>:
    Backbone<A> + AutodiffModule<A, InnerModule: Backbone<A::InnerBackend>>
{
}
impl<A, M> TrainableBackbone<A> for M
where
    A: TrainingBackend,
    M: Backbone<A> + AutodiffModule<A, InnerModule: Backbone<A::InnerBackend>>,
{
}

/// The training backends; their inner backends (`Flex`, `Cuda`) are the inference ones.
pub type Cpu = burn::backend::Autodiff<burn::backend::Flex>;
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Autodiff<burn::backend::Cuda>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("`{text}`: expected cpu, cuda or cuda:N")]
    Parse { text: String },
    #[error("--devices {list}: all devices of a run are of one kind (all cpu, or all cuda:N)")]
    Mixed { list: String },
    #[error("--devices {list}: {device} is given twice")]
    Repeated { list: String, device: DeviceChoice },
    #[error("--devices: no device given")]
    NoDevice,
    #[error(
        "{device}: this binary was built without CUDA; rebuild with `cargo build --release \
         --features cuda`, or pass --device cpu"
    )]
    NoCuda { device: DeviceChoice },
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Parse { text: s.into() }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A job that trains: written once, generically, run on the chosen backend and backbone,
/// on one device or several of the same kind.
pub trait TrainingJob {
    type Output;
    fn run<A: TrainingBackend, M: TrainableBackbone<A>>(
        self,
        devices: Vec<A::Device>,
    ) -> Self::Output;
}

/// A job that only runs forward passes.
pub trait InferenceJob {
    type Output;
    fn run<B: InferenceBackend, M: Backbone<B>>(self, device: B::Device) -> Self::Output;
}

/// Runs `job` on the chosen devices with the chosen backbone family: the one place where a
/// training job learns its backend and backbone types. Several `cpu` entries are several
/// ranks sharing the CPU (for tests of data parallelism); cuda devices must differ.
pub fn run_training<J: TrainingJob>(
    choices: &[DeviceChoice],
    kind: BackboneKind,
    job: J,
) -> Result<J::Output, DeviceError> {
    fn on<A: TrainingBackend, J: TrainingJob>(
        kind: BackboneKind,
        job: J,
        devices: Vec<A::Device>,
    ) -> J::Output {
        match kind {
            BackboneKind::Vit => job.run::<A, VisionTransformer<A>>(devices),
            BackboneKind::ResNet => job.run::<A, ResNet<A>>(devices),
        }
    }
    let list = || {
        let names: Vec<String> = choices.iter().map(ToString::to_string).collect();
        names.join(",")
    };
    let first = *choices.first().ok_or(DeviceError::NoDevice)?;
    for (i, &device) in choices.iter().enumerate() {
        if std::mem::discriminant(&device) != std::mem::discriminant(&first) {
            return Err(DeviceError::Mixed { list: list() });
        }
        if device != DeviceChoice::Cpu && choices[..i].contains(&device) {
            return Err(DeviceError::Repeated {
                list: list(),
                device,
            });
        }
    }
    match first {
        DeviceChoice::Cpu => Ok(on::<Cpu, J>(
            kind,
            job,
            vec![Default::default(); choices.len()],
        )),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(_) => {
            let devices = (choices.iter())
                .map(|&c| match c {
                    DeviceChoice::Cuda(n) => burn::backend::cuda::CudaDevice::new(n),
                    DeviceChoice::Cpu => unreachable!("checked: one kind"),
                })
                .collect();
            Ok(on::<Gpu, J>(kind, job, devices))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(DeviceError::NoCuda { device: first }),
    }
}

/// A job for a backbone type it names itself (a feature only one backbone has).
pub trait BackendJob {
    type Output;
    fn run<B: InferenceBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `job` on the chosen device's inference backend.
pub fn run_on_backend<J: BackendJob>(
    choice: DeviceChoice,
    job: J,
) -> Result<J::Output, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(job.run::<burn::backend::Flex>(Default::default())),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(n) => {
            Ok(job.run::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(n)))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(DeviceError::NoCuda { device: choice }),
    }
}

/// Runs `job` on the chosen device's inference backend with the chosen backbone family.
pub fn run_inference<J: InferenceJob>(
    choice: DeviceChoice,
    kind: BackboneKind,
    job: J,
) -> Result<J::Output, DeviceError> {
    struct Pick<J>(BackboneKind, J);
    impl<J: InferenceJob> BackendJob for Pick<J> {
        type Output = J::Output;
        fn run<B: InferenceBackend>(self, device: B::Device) -> J::Output {
            match self.0 {
                BackboneKind::Vit => self.1.run::<B, VisionTransformer<B>>(device),
                BackboneKind::ResNet => self.1.run::<B, ResNet<B>>(device),
            }
        }
    }
    run_on_backend(choice, Pick(kind, job))
}
