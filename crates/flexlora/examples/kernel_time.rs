//! Times flexlora's own CPU kernels at the main job's shapes (767 tokens, rank 8, MiniLM's layer
//! sizes), best of 50 calls each: the fused adapter-gradient kernel
//! (`flexlora::adapter::thin`) against LibTorch's four products on one thread, and a dropout
//! mask (`flexlora::dropout::keep_mask`, `[767, 384]`) on two threads:
//! `cargo run --release --example kernel_time`.

use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn best_of(mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..50 {
        let started = Instant::now();
        f();
        best = best.min(started.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    tch::set_num_threads(2);
    let mask = best_of(|| {
        let _ = std::hint::black_box(flexlora::dropout::keep_mask(&[767, 384], 0.1, 7));
    });
    println!("dropout mask [767, 384], 2 threads: {:.0} us", mask * 1e6);
    tch::set_num_threads(1);
    let (tokens, r) = (767usize, 8usize);
    for (inp, out) in [(384usize, 384usize), (384, 1536), (1536, 384)] {
        let cpu = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([tokens as i64, inp as i64], cpu);
        let g = Tensor::randn([tokens as i64, out as i64], cpu);
        let down = Tensor::randn([r as i64, inp as i64], cpu);
        let up = Tensor::randn([out as i64, r as i64], cpu);
        let slice = |t: &Tensor| Vec::<f32>::try_from(t.reshape([-1])).unwrap_or_default();
        let (xs, gs, ds, us) = (slice(&x), slice(&g), slice(&down), slice(&up));
        let dims = (tokens, inp, out, r);
        let kernel = best_of(|| {
            std::hint::black_box(flexlora::adapter::thin::factor_gradients(
                &xs, &gs, &ds, &us, dims,
            ));
        });
        let library = best_of(|| {
            let right = x.mm(&down.tr());
            let left = g.mm(&up.tr().contiguous().tr());
            let _ = std::hint::black_box((right.tr().mm(&g).tr(), left.tr().mm(&x)));
        });
        let flops = 4.0 * (tokens * r * (inp + out)) as f64;
        println!(
            "{inp} -> {out}: kernel {:.0} us ({:.0} GFLOP/s), LibTorch products {:.0} us ({:.0} GFLOP/s)",
            kernel * 1e6,
            flops / kernel / 1e9,
            library * 1e6,
            flops / library / 1e9
        );
    }
}
