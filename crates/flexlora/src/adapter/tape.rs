//! Training an adapted layer through its merged weight: the adapter's gradients without the
//! adapter's thin products in the autograd graph.
//!
//! An adapted layer computes `y = x Wᵀ + b + (x downᵀ) upᵀ` with `ΔW = up · down` (`out × r`,
//! `r × in`; [`super::Adapter::factors`]). Run through autograd term by term, the update costs
//! two products that write a `[tokens, out]` and a `[tokens, in]` tensor, and two full passes to
//! add them, on top of the thin products its own gradients need; on a 2-core CPU that was a
//! fifth of the training step for a rank-8 LoRA on MiniLM. The same values and gradients come
//! cheaper in two passes:
//!
//! 1. **Forward through the merged weight.** `y = x (W + ΔW)ᵀ + b`, with `W + ΔW` formed
//!    outside the graph (one `out × in` pass per layer). The input gradient of that product,
//!    `g (W + ΔW)`, is exactly the one the two terms give (`g W + (g up) down`), so everything
//!    below the layer is trained as before. The layer's input `x` and output `y` are recorded
//!    in a [`Tap`].
//! 2. **Backward in two steps** ([`backward`]). The first takes the loss's gradient with
//!    respect to every trainable tensor and every tapped output (`g = ∂L/∂y`) without storing
//!    anything. The second runs backward through the surrogate
//!    `S = Σ_p ⟨∂L/∂p, p⟩ + Σ_taps Σ_{t,i} (g up)_{ti} (x downᵀ)_{ti}`, with the gradients held
//!    constant. `∂S/∂p = ∂L/∂p` (the first term hands every trainable tensor its own gradient),
//!    and since `Σ (g up) ⊙ (x downᵀ) = ⟨gᵀx, up · down⟩ = ⟨∂L/∂W, ΔW⟩`, the second term's
//!    gradient with respect to the factors (and through them `A`, `B` or `P`, `λ`, `Q`) is the
//!    adapter's true gradient: `∂L/∂up = gᵀ (x downᵀ)`, `∂L/∂down = (g up)ᵀ x`. Four thin
//!    products that only read `[tokens, ·]` tensors, nothing written at full width.
//!
//! Recording is on only inside [`record`], which the training step wraps around its forward
//! pass and pairs with [`backward`]: a forward pass anywhere else (evaluation, tests, a caller
//! running its own `backward()`) takes the term-by-term path, whose gradients need nothing
//! more. Layers whose input needs no gradient (the first layer's, above frozen embeddings), with
//! adapter dropout, or with a base stored in another precision also take that path: the first
//! because `∂L/∂y` cannot be asked of a tensor outside the graph, the others because the merged
//! weight would change what they compute.

use std::cell::RefCell;
use tch::Tensor;

/// One adapted layer's forward pass on the merged weight, kept for [`backward`].
#[derive(Debug)]
pub struct Tap {
    /// The layer's input, detached (`[.., in]`).
    input: Tensor,
    /// The layer's output, in the graph (`[.., out]`).
    output: Tensor,
    /// The update's factors with their graph to the adapter's parameters.
    down: Tensor,
    /// See `down`.
    up: Tensor,
}

thread_local! {
    /// The taps of the forward pass being recorded; `None` outside [`record`].
    static TAPE: RefCell<Option<Vec<Tap>>> = const { RefCell::new(None) };
}

/// Runs `forward` with recording on: adapted layers that can take the merged path do, and
/// their taps are returned with `forward`'s result. Pass both to [`backward`].
pub fn record<T>(forward: impl FnOnce() -> T) -> (T, Vec<Tap>) {
    let outer = TAPE.with(|t| t.borrow_mut().replace(Vec::new()));
    let result = forward();
    let taps = TAPE.with(|t| std::mem::replace(&mut *t.borrow_mut(), outer));
    (result, taps.unwrap_or_default())
}

/// Whether a forward pass is being recorded on this thread.
pub(crate) fn recording() -> bool {
    TAPE.with(|t| t.borrow().is_some())
}

/// `y = x (W + up · down)ᵀ + b` for a layer being recorded (through [`crate::gemm::linear`],
/// as the base layer's own product), its tap kept.
pub(crate) fn merged_forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    down: Tensor,
    up: Tensor,
) -> Tensor {
    let merged = tch::no_grad(|| weight.addmm(&up, &down));
    let output = crate::gemm::linear(x, &merged, bias);
    let tap = Tap {
        input: x.detach(),
        output: output.shallow_clone(),
        down,
        up,
    };
    TAPE.with(|t| {
        if let Some(taps) = t.borrow_mut().as_mut() {
            taps.push(tap);
        }
    });
    output
}

/// `(∂L/∂down, ∂L/∂up) = ((g up)ᵀ x, gᵀ (x downᵀ))` from the tapped output's gradient `g`.
/// Every product is arranged so that the `[tokens, ·]` operand is read along its rows and the
/// thin one is the transposed operand: LibTorch's MKL runs `g · up` 2-3× slower with `up` as a
/// plain `out × r` matrix than with `upᵀ` transposed, and `gᵀ · right` 3× slower than
/// `(rightᵀ · g)ᵀ` (`python/bench/thin_products.py`).
fn factor_gradients(tap: &Tap, g: &Tensor) -> (Tensor, Tensor) {
    thin_gradients(&tap.input, g, &tap.down.detach(), &tap.up.detach())
}

/// [`factor_gradients`] from the tensors themselves (`down`, `up` detached): float32 on the
/// CPU by the fused kernel of [`super::thin`], anything else by four library products.
fn thin_gradients(x: &Tensor, g: &Tensor, down: &Tensor, up: &Tensor) -> (Tensor, Tensor) {
    let flat = |t: &Tensor| t.reshape([-1, t.size().last().copied().unwrap_or(1)]);
    let (g, x) = (flat(g), flat(x));
    let on_cpu_f32 = [&x, &g, down, up]
        .iter()
        .all(|t| t.device() == tch::Device::Cpu && t.kind() == tch::Kind::Float);
    if on_cpu_f32 {
        let (x, g, down, up) = (
            x.contiguous(),
            g.contiguous(),
            down.contiguous(),
            up.contiguous(),
        );
        let (tokens, inp) = (x.size()[0], x.size()[1]);
        let (out, r) = (up.size()[0], up.size()[1]);
        let dims = (tokens as usize, inp as usize, out as usize, r as usize);
        let (grad_down, grad_up) = super::thin::factor_gradients(
            cpu_f32(&x),
            cpu_f32(&g),
            cpu_f32(&down),
            cpu_f32(&up),
            dims,
        );
        return (
            Tensor::from_slice(&grad_down).view([r, inp]),
            Tensor::from_slice(&grad_up).view([out, r]),
        );
    }
    let right = x.mm(&down.tr()); // [tokens, r]
    let left = g.mm(&up.tr().contiguous().tr()); // [tokens, r]
    let grad_up = right.tr().mm(&g).tr(); // [out, r]
    let grad_down = left.tr().mm(&x); // [r, in]
    (grad_down, grad_up)
}

/// The elements of a contiguous float32 CPU tensor.
fn cpu_f32(t: &Tensor) -> &[f32] {
    debug_assert!(t.is_contiguous() && t.kind() == tch::Kind::Float);
    let n = t.numel();
    if n == 0 {
        return &[];
    }
    // SAFETY: `t` is a contiguous float32 CPU tensor of `n` elements (checked by the caller),
    // whose storage lives as long as the borrow of `t`; nothing writes to it meanwhile (the
    // backward pass that produced it has finished and the kernel only reads).
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) }
}

/// [`factor_gradients`] of every `(tap, g)`, in order. Each tap's products run on one thread
/// (the fused kernel, or MKL, which uses one thread for products this small), so the taps are
/// shared out among LibTorch's threads ([`crate::omp`]), each running its taps one after
/// another.
fn all_factor_gradients(tapped: &[(&Tap, &Tensor)]) -> Vec<(Tensor, Tensor)> {
    let threads = (tch::get_num_threads().max(1) as usize).min(tapped.len());
    if threads <= 1
        || tapped
            .first()
            .is_some_and(|(t, _)| t.input.device() != tch::Device::Cpu)
    {
        return tapped.iter().map(|(t, g)| factor_gradients(t, g)).collect();
    }
    // Each member takes its share of the work items (tensors are Send, not Sync) and leaves
    // its results by index.
    type Item = (usize, Tensor, Tensor, Tensor, Tensor);
    let shares: Vec<std::sync::Mutex<Vec<Item>>> = (0..threads)
        .map(|_| std::sync::Mutex::new(Vec::new()))
        .collect();
    // Balance by the products' size: tokens · (in + out) per tap, largest first, each to the
    // least loaded share.
    let mut order: Vec<usize> = (0..tapped.len()).collect();
    let cost = |i: usize| {
        let (t, g) = tapped[i];
        t.input.numel() + g.numel()
    };
    order.sort_by_key(|&i| std::cmp::Reverse(cost(i)));
    let mut loads = vec![0usize; threads];
    for i in order {
        let share = (0..threads).min_by_key(|&s| loads[s]).unwrap_or(0);
        loads[share] += cost(i);
        let (t, g) = tapped[i];
        if let Ok(mut items) = shares[share].lock() {
            items.push((
                i,
                t.input.shallow_clone(),
                g.shallow_clone(),
                t.down.detach(),
                t.up.detach(),
            ));
        }
    }
    let results: std::sync::Mutex<Vec<Option<(Tensor, Tensor)>>> =
        std::sync::Mutex::new((0..tapped.len()).map(|_| None).collect());
    crate::omp::for_each_thread(threads, &|index, team| {
        // A smaller team than asked: the last member also runs the shares without a member.
        let mine = if index + 1 == team {
            index..threads
        } else {
            index..index + 1
        };
        for share in mine {
            let items =
                std::mem::take(&mut *shares[share].lock().unwrap_or_else(|e| e.into_inner()));
            for (i, x, g, down, up) in items {
                let pair = thin_gradients(&x, &g, &down, &up);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(pair);
            }
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .zip(tapped)
        .map(|(r, (t, g))| r.unwrap_or_else(|| factor_gradients(t, g)))
        .collect()
}

/// Backward pass of `loss` over a forward pass recorded with [`record`]: accumulates into the
/// `.grad` of every tensor in `trainables` (and of the adapters' parameters behind the taps)
/// exactly what `loss.backward()` over the term-by-term forward pass would (module docs). With
/// no taps it is `loss.backward()` (and `trainables`, which lists them, is not called).
pub fn backward(loss: &Tensor, taps: Vec<Tap>, trainables: impl FnOnce() -> Vec<Tensor>) {
    if taps.is_empty() {
        loss.backward();
        return;
    }
    let trainables = trainables();
    let mut inputs: Vec<&Tensor> = trainables.iter().filter(|p| p.requires_grad()).collect();
    let own = inputs.len();
    inputs.extend(taps.iter().map(|t| &t.output));
    let grads = Tensor::run_backward(&[loss], &inputs, false, false);
    // A tensor whose `.grad` already exists (every step after the first: zero_grad zeroes
    // in place) takes its gradient by an in-place add; the others go through the surrogate.
    let mut terms: Vec<Tensor> = Vec::new();
    for (p, g) in inputs[..own].iter().zip(&grads[..own]) {
        if g.defined() {
            let mut stored = p.grad();
            if stored.defined() {
                let _ = tch::no_grad(|| stored.g_add_(g));
            } else {
                terms.push(inner_product(p, g));
            }
        }
    }
    let tapped: Vec<(&Tap, &Tensor)> = taps
        .iter()
        .zip(&grads[own..])
        .filter(|(_, g)| g.defined())
        .collect();
    for (tap, (grad_down, grad_up)) in tapped
        .iter()
        .map(|(t, _)| *t)
        .zip(all_factor_gradients(&tapped))
    {
        terms.push(inner_product(&tap.down, &grad_down));
        terms.push(inner_product(&tap.up, &grad_up));
    }
    let Some(first) = terms.first() else {
        return;
    };
    // One stack and sum rather than a chain of scalar adds (fewer operator calls both ways).
    let surrogate = if terms.iter().all(|t| t.kind() == first.kind()) {
        Tensor::stack(&terms, 0).sum(first.kind())
    } else {
        let mut total = terms[0].to_kind(tch::Kind::Double);
        for t in &terms[1..] {
            total += t.to_kind(tch::Kind::Double);
        }
        total
    };
    surrogate.backward();
}

/// `⟨a, b⟩` over all elements, differentiable in `a` (`b` is a constant gradient).
fn inner_product(a: &Tensor, b: &Tensor) -> Tensor {
    a.reshape([-1]).dot(&b.reshape([-1]).to_kind(a.kind()))
}
