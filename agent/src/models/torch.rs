//! The libtorch backend (`models` feature): a package's TorchScript towers loaded with `tch`
//! on the chosen device, run without autograd. Inputs and outputs are float32; a package
//! exported with `--dtype bfloat16` (for GPU agents) casts to bfloat16 inside its graph, since
//! a traced transformers model cannot be cast afterwards. The agent's build script force-links `libtorch_cuda` when the libtorch it
//! builds against has it (`-Wl,--no-as-needed`, see `agent/build.rs`), otherwise CUDA would be
//! silently absent; [`select_device`] refuses `cuda` without it instead of falling back.

use tch::{CModule, Device, IValue, Kind, Tensor};

use super::manifest::{self, Package};
use super::runner::{ImageOutput, Matrix, ModelRunner, RunError};

/// Whether this agent's libtorch can use CUDA (linked and a device present).
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

/// Whether `libtorch_cuda` is loaded in this process (Linux): false means a CPU-only
/// libtorch, or a CUDA libtorch whose CUDA part the linker dropped.
pub fn cuda_linked() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| m.contains("libtorch_cuda.so"))
}

/// `auto` (CUDA 0 when available, else CPU), `cpu` or `cuda:N`.
pub fn select_device(setting: &str) -> Result<Device, String> {
    match setting {
        "auto" => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        s => {
            let n: usize = s
                .strip_prefix("cuda:")
                .or_else(|| (s == "cuda").then_some("0"))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("device {s:?} is not auto, cpu or cuda:N"))?;
            if !tch::Cuda::is_available() {
                let why = if cuda_linked() {
                    "libtorch_cuda is loaded but no CUDA device is visible"
                } else {
                    "this agent's libtorch has no CUDA (CPU-only libtorch, or libtorch_cuda not linked)"
                };
                return Err(format!("device {s} asked for, but {why}"));
            }
            if n as i64 >= tch::Cuda::device_count() {
                return Err(format!("device {s} asked for, but only {} CUDA devices exist", tch::Cuda::device_count()));
            }
            Ok(Device::Cuda(n))
        }
    }
}

fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}

/// A loaded package.
#[derive(Debug)]
pub struct TorchRunner {
    name: String,
    kind: manifest::Kind,
    height: i64,
    width: i64,
    text_len: i64,
    device: Device,
    image: CModule,
    text: Option<CModule>,
}

fn failed(model: &str, e: impl std::fmt::Display) -> RunError {
    let message = e.to_string();
    if message.contains("out of memory") {
        RunError::OutOfMemory { device: String::new(), message }
    } else {
        RunError::Failed { model: model.to_string(), message }
    }
}

fn matrix(model: &str, t: &Tensor) -> Result<Matrix, RunError> {
    let t = t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
    let size = t.size();
    if size.len() != 2 {
        return Err(failed(model, format!("expected a [batch, dim] output, got {size:?}")));
    }
    let data = Vec::<f32>::try_from(t.flatten(0, -1)).map_err(|e| failed(model, e))?;
    Ok(Matrix { rows: size[0] as usize, cols: size[1] as usize, data })
}

impl TorchRunner {
    /// Loads a verified package's towers on `device`.
    pub fn load(package: &Package, device: Device) -> Result<TorchRunner, String> {
        let m = &package.manifest;
        let load = |f: &str| {
            let mut module = CModule::load_on_device(package.dir.join(f), device)
                .map_err(|e| format!("model package {}: cannot load {f}: {e}", m.name))?;
            module.set_eval();
            Ok::<_, String>(module)
        };
        let image = load("image.pt")?;
        let text = match m.kind {
            manifest::Kind::ImageTextScorer => Some(load("text.pt")?),
            manifest::Kind::ImageEmbedder => None,
        };
        Ok(TorchRunner {
            name: m.name.clone(),
            kind: m.kind,
            height: i64::from(m.image.height),
            width: i64::from(m.image.width),
            text_len: m.text.as_ref().map_or(0, |t| t.length as i64),
            device,
            image,
            text,
        })
    }
}

impl ModelRunner for TorchRunner {
    fn device(&self) -> String {
        device_name(self.device)
    }

    fn image(&self, pixels: &[f32], n: usize) -> Result<ImageOutput, RunError> {
        let _guard = tch::no_grad_guard();
        let x = Tensor::from_slice(pixels).view([n as i64, 3, self.height, self.width]).to_device(self.device);
        let out = self.image.forward_is(&[IValue::Tensor(x)]).map_err(|e| failed(&self.name, e))?;
        match (self.kind, out) {
            (manifest::Kind::ImageTextScorer, IValue::Tensor(t)) => Ok(ImageOutput::Features(matrix(&self.name, &t)?)),
            (manifest::Kind::ImageEmbedder, IValue::Tuple(parts)) if parts.len() == 2 => {
                let (IValue::Tensor(pooler), IValue::Tensor(hidden)) = (&parts[0], &parts[1]) else {
                    return Err(failed(&self.name, "expected (pooler, last_hidden_state) tensors"));
                };
                let size = hidden.size();
                if size.len() != 3 {
                    return Err(failed(&self.name, format!("last_hidden_state is {size:?}, not [B, T, D]")));
                }
                Ok(ImageOutput::Embeddings {
                    pooler: matrix(&self.name, pooler)?,
                    hidden: matrix(&self.name, &hidden.flatten(1, -1))?,
                    tokens: size[1] as usize,
                })
            }
            (kind, other) => Err(failed(&self.name, format!("unexpected {kind:?} image output {other:?}"))),
        }
    }

    fn text(&self, ids: &[i64], n: usize) -> Result<Matrix, RunError> {
        let _guard = tch::no_grad_guard();
        let text = self.text.as_ref().ok_or_else(|| failed(&self.name, "this package has no text tower"))?;
        let x = Tensor::from_slice(ids).view([n as i64, self.text_len]).to_device(self.device);
        let out = text.forward_ts(&[x]).map_err(|e| failed(&self.name, e))?;
        matrix(&self.name, &out)
    }
}
