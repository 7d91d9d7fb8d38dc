//! [`CudaBuffer`]: device memory on a real GPU, 16-byte aligned host memory under emulation.
//! Kernels see both as one address (`u64`), so the ops never ask which one they have.

use crate::device::{Device, EMULATED, REAL};
use cudarc::driver::{CudaSlice, DevicePtr};
use flashneck_core::{DeviceBuffer, Error, Result, Scalar};
use std::marker::PhantomData;

/// Where the bytes live.
enum Storage {
    /// Device memory (absent when the buffer is empty: CUDA refuses 0-byte allocations).
    Device(Option<CudaSlice<u8>>),
    /// Host memory for the emulator, in 16-byte units so that vector loads are aligned.
    Host(Vec<u128>),
}

/// A buffer of `len` elements of `T` on a CUDA device (or its emulation).
pub struct CudaBuffer<T> {
    storage: Storage,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T: Scalar> DeviceBuffer for CudaBuffer<T> {
    fn len(&self) -> usize {
        self.len
    }
}

impl<T: Scalar> CudaBuffer<T> {
    fn bytes(len: usize, backend: &str) -> Result<usize> {
        len.checked_mul(size_of::<T>())
            .ok_or_else(|| Error::device(backend, format!("{len} elements overflow usize")))
    }

    /// A zero-filled buffer of `len` elements.
    pub(crate) fn zeros(dev: &Device, len: usize) -> Result<Self> {
        let bytes = Self::bytes(len, dev.backend())?;
        let storage = match dev {
            Device::Emulated => {
                let mut v = Vec::new();
                v.try_reserve_exact(bytes.div_ceil(16)).map_err(|e| {
                    Error::device(EMULATED, format!("cannot allocate {bytes} bytes: {e}"))
                })?;
                v.resize(bytes.div_ceil(16), 0u128);
                Storage::Host(v)
            }
            Device::Real(d) if bytes > 0 => {
                Storage::Device(Some(d.stream.alloc_zeros::<u8>(bytes).map_err(|e| {
                    Error::device(REAL, format!("cannot allocate {bytes} bytes: {e:?}"))
                })?))
            }
            Device::Real(_) => Storage::Device(None),
        };
        Ok(CudaBuffer {
            storage,
            len,
            _elem: PhantomData,
        })
    }

    /// A buffer holding a copy of `data`.
    pub(crate) fn from_host(dev: &Device, data: &[T]) -> Result<Self> {
        let mut b = Self::zeros(dev, data.len())?;
        let src: &[u8] = bytemuck::cast_slice(data);
        match (&mut b.storage, dev) {
            (Storage::Host(v), _) => {
                bytemuck::cast_slice_mut::<u128, u8>(v)[..src.len()].copy_from_slice(src)
            }
            (Storage::Device(Some(s)), Device::Real(d)) => d
                .stream
                .memcpy_htod(src, s)
                .map_err(|e| Error::device(REAL, format!("upload failed: {e:?}")))?,
            _ => {}
        }
        Ok(b)
    }

    /// Copy the buffer back to the host (waits for queued work).
    pub(crate) fn to_host(&self, dev: &Device) -> Result<Vec<T>> {
        let bytes = Self::bytes(self.len, dev.backend())?;
        let mut out = vec![T::zeroed(); self.len];
        match (&self.storage, dev) {
            (Storage::Host(v), _) => bytemuck::cast_slice_mut::<T, u8>(&mut out)
                .copy_from_slice(&bytemuck::cast_slice::<u128, u8>(v)[..bytes]),
            (Storage::Device(Some(s)), Device::Real(d)) => {
                d.stream
                    .memcpy_dtoh(s, bytemuck::cast_slice_mut::<T, u8>(&mut out))
                    .map_err(|e| Error::device(REAL, format!("download failed: {e:?}")))?;
                d.stream
                    .synchronize()
                    .map_err(|e| Error::device(REAL, format!("download failed: {e:?}")))?;
            }
            (Storage::Device(None), _) => {}
            (Storage::Device(Some(_)), Device::Emulated) => {
                return Err(Error::device(
                    EMULATED,
                    "a device buffer was passed to the emulated backend",
                ));
            }
        }
        Ok(out)
    }

    /// The address kernels use (0 for an empty buffer). Take outputs through
    /// [`CudaBuffer::addr_mut`] so that the borrow checker sees the write.
    pub(crate) fn addr(&self, dev: &Device) -> Result<u64> {
        match (&self.storage, dev) {
            (Storage::Host(v), Device::Emulated) => Ok(v.as_ptr() as u64),
            (Storage::Device(Some(s)), Device::Real(d)) => Ok(s.device_ptr(&d.stream).0),
            (Storage::Device(None), Device::Real(_)) => Ok(0),
            _ => Err(Error::device(
                dev.backend(),
                "a buffer of another kind of device was passed to this backend",
            )),
        }
    }

    /// The address of an output buffer.
    pub(crate) fn addr_mut(&mut self, dev: &Device) -> Result<u64> {
        match (&mut self.storage, dev) {
            (Storage::Host(v), Device::Emulated) => Ok(v.as_mut_ptr() as u64),
            _ => self.addr(dev),
        }
    }
}
