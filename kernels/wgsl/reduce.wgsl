// Workgroup tree reductions, shared by grkan.wgsl and gumbel.wgsl: the host puts this file
// between common.wgsl and either op's file, or reduce_subgroup.wgsl (the same interface with
// subgroup operations) where the device has SUBGROUP. `WG` (threads per workgroup, a power of
// two) is the op file's constant, so the scratch array has one slot per thread of that op.
//
// Every thread of the workgroup must call these in uniform control flow (they hold barriers);
// all threads get the result. The pairing pattern is fixed, so results are reproducible.

var<workgroup> red: array<f32, WG>;

// The thread's ids the reductions need: entry points that reduce take a `Lane` argument (its
// subgroup twin adds the subgroup builtins, which only exist under `enable subgroups`).
struct Lane {
    @builtin(local_invocation_index) lid: u32,
}

fn reduce_max(lane: Lane, v: f32) -> f32 {
    let lid = lane.lid;
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lane: Lane, v: f32) -> f32 {
    let lid = lane.lid;
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
