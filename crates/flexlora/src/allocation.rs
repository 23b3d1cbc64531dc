//! One FlexLoRA allocation step, end to end: read the scores out of the adapters, ask the
//! core's [`RankAllocator`], apply prunes then expansions, and restart exactly the changed
//! slots' optimiser state.

use crate::adapter::{AdapterError, SvdAdapter};
use crate::config::NewDirectionInit;
use crate::optim::{AdamW, OptimError};
use crate::sensitivity::SensitivityEma;
use flexlora_core::{
    ActivityReport, AdjustmentSchedule, AllocationActivity, Importance, MatrixRank, RankAllocator,
    matrix_sensitivity, slot_to_expand, slot_to_prune,
};
use serde::Serialize;
use thiserror::Error;

/// How the allocation step reads and changes the adapters.
#[derive(Debug, Clone, Copy)]
pub struct AllocationPolicy {
    /// The per-matrix score.
    pub importance: Importance,
    /// Score the true singular values of `P diag(λ) Q` instead of `λ`.
    pub exact_spectrum: bool,
    /// Which side of the allocation is on.
    pub allocator: RankAllocator,
    /// How a new direction starts.
    pub init: NewDirectionInit,
    /// Standard deviation of a new direction's P column and Q row.
    pub init_std: f64,
}

/// What one allocation step did (a line of `ranks.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllocationRecord {
    /// The optimiser step after which the allocation ran.
    pub step: u64,
    /// `b(t)`: the moves the schedule allowed at this step.
    pub b: u32,
    /// Every matrix's score, computed once before any change.
    pub scores: Vec<f64>,
    /// Kendall's τ_b between these scores and the previous adjustment's (`None` at the first):
    /// how stable the importance ranking is.
    pub tau: Option<f64>,
    /// `(matrix, slot)` pairs deactivated.
    pub pruned: Vec<(usize, usize)>,
    /// `(matrix, slot)` pairs activated.
    pub expanded: Vec<(usize, usize)>,
    /// Every matrix's rank after the step.
    pub ranks: Vec<usize>,
    /// How much the allocation has acted in the run so far, this step included.
    pub activity: ActivityReport,
    /// The loss on the step's first micro-batch just after the allocation minus just before
    /// it (`allocation.measure_impact`; absent otherwise): what the prunes and the new
    /// directions' initialisation did to the model's output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_change: Option<f64>,
}

/// An allocation step that could not be applied (an internal inconsistency, never expected).
#[derive(Debug, Error)]
pub enum AllocationError {
    /// An adapter refused a change.
    #[error("matrix {matrix}: {source}")]
    Adapter {
        /// The matrix index.
        matrix: usize,
        /// The adapter's error.
        source: AdapterError,
    },
    /// The optimiser refused a reset.
    #[error("matrix {matrix}: {source}")]
    Optimiser {
        /// The matrix index.
        matrix: usize,
        /// The optimiser's error.
        source: OptimError,
    },
    /// `importance = "sensitivity"` without sensitivity EMAs for the adapters.
    #[error(
        "the sensitivity importance needs the sensitivity EMAs of all {adapters} adapters \
         (got {tracked})"
    )]
    Sensitivity {
        /// Adapters given.
        adapters: usize,
        /// Adapters the EMAs track.
        tracked: usize,
    },
    /// The optimiser's groups do not line up with the adapters.
    #[error("the optimiser has {groups} parameter groups but there are {adapters} adapters")]
    Groups {
        /// Groups in the optimiser.
        groups: usize,
        /// Adapters given.
        adapters: usize,
    },
}

/// Applies one allocation step with `b` moves to `adapters` (in the model's documented order),
/// whose optimiser groups must be `0..adapters.len()` in the same order: register the adapters
/// first (see [`register_adapters`]), other parameters after them.
///
/// `sensitivity` holds the adapters' sensitivity EMAs; it is required for
/// `importance = "sensitivity"` (and ignored otherwise, except that a changed slot's EMAs are
/// reset whenever it is given).
///
/// `cap` is the schedule's `b(t)` at this step; the `adaptive` schedule lowers it from the
/// ranking's stability (see [`AdjustmentSchedule::adaptive_moves`]). `activity` is told what
/// the step did.
pub fn apply_allocation(
    adapters: &mut [&mut SvdAdapter],
    optimiser: &mut AdamW,
    policy: &AllocationPolicy,
    mut sensitivity: Option<&mut SensitivityEma>,
    (step, cap, schedule): (u64, u32, &AdjustmentSchedule),
    activity: &mut AllocationActivity,
) -> Result<AllocationRecord, AllocationError> {
    if optimiser.groups() < adapters.len() {
        return Err(AllocationError::Groups {
            groups: optimiser.groups(),
            adapters: adapters.len(),
        });
    }
    let scores = matrix_scores(adapters, policy, sensitivity.as_deref())?;
    let matrices: Vec<MatrixRank> = adapters
        .iter()
        .zip(&scores)
        .map(|(a, &score)| MatrixRank {
            rank: a.rank(),
            r_max: a.config().r_max,
            score,
        })
        .collect();
    let tau = activity.tau_against_previous(&scores);
    let b = schedule.adaptive_moves(cap, tau);
    let decision = policy.allocator.decide(&matrices, b as usize);

    let mut pruned = Vec::with_capacity(decision.prune.len());
    for &k in &decision.prune {
        let a = &mut *adapters[k];
        // With the exact spectrum the score reads the true singular values; the slot removed
        // is then the one whose rank-one term has the least energy (see slot_energies).
        let energies = if policy.exact_spectrum {
            a.slot_energies()
        } else {
            a.lambdas()
        };
        if let Some(slot) = slot_to_prune(&energies, a.active()) {
            a.prune(slot)
                .map_err(|source| AllocationError::Adapter { matrix: k, source })?;
            restart_slot(optimiser, sensitivity.as_deref_mut(), k, slot)?;
            pruned.push((k, slot));
        }
    }
    let mut expanded = Vec::with_capacity(decision.expand.len());
    for &k in &decision.expand {
        let a = &mut *adapters[k];
        if let Some(slot) = slot_to_expand(a.active()) {
            a.expand(slot, policy.init, policy.init_std)
                .map_err(|source| AllocationError::Adapter { matrix: k, source })?;
            restart_slot(optimiser, sensitivity.as_deref_mut(), k, slot)?;
            expanded.push((k, slot));
        }
    }
    for (k, a) in adapters.iter_mut().enumerate() {
        keep_output_across_rank_change(a, optimiser, k, matrices[k].rank)?;
    }
    let prune_matrices: Vec<usize> = pruned.iter().map(|&(k, _)| k).collect();
    let expand_matrices: Vec<usize> = expanded.iter().map(|&(k, _)| k).collect();
    activity.record(&scores, tau, &prune_matrices, &expand_matrices);
    Ok(AllocationRecord {
        step,
        b,
        scores,
        tau,
        pruned,
        expanded,
        ranks: adapters.iter().map(|a| a.rank()).collect(),
        activity: activity.report(),
        loss_change: None,
    })
}

/// Every matrix's score under `policy`, computed once before any change: the spectral metric
/// of its active `λ` (or of its true singular values with `exact_spectrum`), or the mean
/// sensitivity of its active triplets.
fn matrix_scores(
    adapters: &[&mut SvdAdapter],
    policy: &AllocationPolicy,
    sensitivity: Option<&SensitivityEma>,
) -> Result<Vec<f64>, AllocationError> {
    if let Some(metric) = policy.importance.spectral() {
        return Ok(adapters
            .iter()
            .map(|a| {
                let spectrum = if policy.exact_spectrum {
                    a.exact_spectrum()
                } else {
                    a.active_lambdas()
                };
                metric.score(&spectrum)
            })
            .collect());
    }
    let ema =
        sensitivity
            .filter(|e| e.len() == adapters.len())
            .ok_or(AllocationError::Sensitivity {
                adapters: adapters.len(),
                tracked: sensitivity.map_or(0, SensitivityEma::len),
            })?;
    Ok(ema
        .triplet_scores_host()
        .iter()
        .zip(adapters.iter())
        .map(|(s, a)| matrix_sensitivity(s, a.active()))
        .collect())
}

/// Restarts a pruned or added slot's optimiser state and, when tracked, its sensitivity EMAs.
fn restart_slot(
    optimiser: &mut AdamW,
    sensitivity: Option<&mut SensitivityEma>,
    matrix: usize,
    slot: usize,
) -> Result<(), AllocationError> {
    optimiser
        .reset_slot(matrix, slot)
        .map_err(|source| AllocationError::Optimiser { matrix, source })?;
    if let Some(e) = sensitivity {
        e.reset_slot(matrix, slot);
    }
    Ok(())
}

/// Under `scale = "current_rank"` the scale `s = α / r` changes with the rank, which would
/// rescale every direction the matrix keeps: a pruned matrix's other directions would grow, and
/// an expansion would not be zero-impact. So `λ` is multiplied by `c = r_after / r_before`
/// (`s_after · λ_after = s_before · λ_before`), and its AdamW moments by `1/c` and `1/c²`, the
/// moments of the gradient with respect to the rescaled `λ` (its gradient is the old one over
/// `c`): the output and the optimiser's next step in output space are unchanged.
fn keep_output_across_rank_change(
    adapter: &mut SvdAdapter,
    optimiser: &mut AdamW,
    matrix: usize,
    rank_before: usize,
) -> Result<(), AllocationError> {
    let c = adapter.rescale_for_rank_change(rank_before, adapter.rank());
    if c == 1.0 {
        return Ok(());
    }
    tch::no_grad(|| {
        let _ = adapter.lambda.g_mul_scalar_(c);
    });
    optimiser
        .rescale_parameter(matrix, &adapter.lambda, c)
        .map_err(|source| AllocationError::Optimiser { matrix, source })
}

/// Adds each adapter's `P`, `λ`, `Q` to `optimiser` as one group, in order, so group `k` is
/// adapter `k`.
pub fn register_adapters<'a>(
    optimiser: &mut AdamW,
    adapters: impl IntoIterator<Item = &'a SvdAdapter>,
) {
    for a in adapters {
        let params: Vec<(&tch::Tensor, Option<usize>)> = a
            .slotted_parameters()
            .into_iter()
            .map(|(t, axis)| (t, Some(axis)))
            .collect();
        optimiser.add_group(&params);
    }
}
