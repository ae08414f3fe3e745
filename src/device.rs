//! Backends and devices: the code is generic over Burn's `AutodiffBackend`; the binary picks
//! `Autodiff<Flex>` (CPU, always built) or `Autodiff<Cuda>` (the `cuda` feature) at run time.

use std::fmt;
use std::str::FromStr;

pub type Cpu = burn::backend::Autodiff<burn::backend::Flex>;
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Autodiff<burn::backend::Cuda>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{s}`: expected cpu, cuda or cuda:N")),
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

/// Runs `job` on the chosen backend; `job` is written once, generically.
pub trait BackendJob {
    type Output;
    fn run<A: burn::tensor::backend::AutodiffBackend>(self, device: A::Device) -> Self::Output;
}

pub fn dispatch<J: BackendJob>(choice: DeviceChoice, job: J) -> Result<J::Output, String> {
    match choice {
        DeviceChoice::Cpu => Ok(job.run::<Cpu>(Default::default())),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(n) => Ok(job.run::<Gpu>(burn::backend::cuda::CudaDevice::new(n))),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(
            "this binary was built without CUDA; rebuild with `cargo build --release --features cuda`"
                .into(),
        ),
    }
}
