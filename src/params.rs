//! Parameters by name: the dotted module path (`backbone.blocks.0.attn.qkv.weight`), which
//! is what the optimizer's decay groups, the EMA, checkpoints and weight export key on.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The module path as the derive macros walk it.
#[derive(Default)]
pub struct Path(Vec<String>);

impl Path {
    pub fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    pub fn exit(&mut self) {
        self.0.pop();
    }
    pub fn name(&self) -> String {
        self.0.join(".")
    }
}

/// A parameter flattened to one dimension, with its shape.
pub struct Flat<B: Backend> {
    pub shape: Vec<usize>,
    pub value: Tensor<B, 1>,
}

struct Collect<B: Backend> {
    path: Path,
    out: BTreeMap<String, Flat<B>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let flat = Flat {
            shape: value.dims().to_vec(),
            value: value.flatten(0, D - 1),
        };
        self.out.insert(self.path.name(), flat);
    }
}

/// Every float parameter of `module`, by name.
pub fn collect<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, Flat<B>> {
    let mut visitor = Collect {
        path: Path::default(),
        out: BTreeMap::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

struct Replace<'a, B: Backend, F> {
    path: Path,
    f: &'a mut F,
    _backend: std::marker::PhantomData<B>,
}

impl<B, F> ModuleMapper<B> for Replace<'_, B, F>
where
    B: Backend,
    F: FnMut(&str, Tensor<B, 1>) -> Tensor<B, 1>,
{
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, value, mapper) = param.consume();
        let shape = value.dims();
        let require_grad = value.is_require_grad();
        let mut new = (self.f)(&self.path.name(), value.flatten(0, D - 1)).reshape(shape);
        if require_grad {
            new = new.require_grad();
        }
        Param::from_mapped_value(id, new, mapper)
    }
}

/// `module` with every float parameter replaced by `f(name, flattened value)`, which must
/// keep the element count.
pub fn replace<B, M, F>(module: M, mut f: F) -> M
where
    B: Backend,
    M: Module<B>,
    F: FnMut(&str, Tensor<B, 1>) -> Tensor<B, 1>,
{
    let mut mapper = Replace {
        path: Path::default(),
        f: &mut f,
        _backend: std::marker::PhantomData,
    };
    module.map(&mut mapper)
}

/// Host copies of named tensors as f32 (for safetensors and tests).
pub fn to_host<B: Backend>(
    tensors: &BTreeMap<String, Flat<B>>,
) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    tensors
        .iter()
        .map(|(name, flat)| {
            let values = flat
                .value
                .to_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32 data");
            (name.clone(), (flat.shape.clone(), values))
        })
        .collect()
}

pub fn from_host<B: Backend>(values: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// Why named tensors do not fit a module.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("tensor `{name}` is missing")]
    Missing { name: String },
    #[error("tensor `{name}` has shape {shape:?}, the model needs {expected:?}")]
    Shape {
        name: String,
        shape: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("unexpected tensor `{name}`")]
    Unexpected { name: String },
}

/// `module` with every parameter taken from `tensors` (host f32). Strict: every name must be
/// there with the same shape and every tensor must be used; the error names the tensor.
pub fn load<B: Backend, M: Module<B>>(
    module: M,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    device: &B::Device,
) -> Result<M, LoadError> {
    let expected = collect(&module);
    for (name, flat) in &expected {
        match tensors.get(name) {
            None => return Err(LoadError::Missing { name: name.clone() }),
            Some((shape, _)) if *shape != flat.shape => {
                return Err(LoadError::Shape {
                    name: name.clone(),
                    shape: shape.clone(),
                    expected: flat.shape.clone(),
                });
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = tensors.keys().find(|k| !expected.contains_key(*k)) {
        return Err(LoadError::Unexpected {
            name: extra.clone(),
        });
    }
    Ok(replace(module, |name, _| {
        from_host(&tensors[name].1, device)
    }))
}
