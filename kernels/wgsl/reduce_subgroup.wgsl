// Workgroup reductions with subgroup operations: reduce.wgsl's interface (`Lane`, `red`,
// reduce_max, reduce_sum), used instead of it where the device has SUBGROUP (naga gates the
// subgroup builtins by that capability; it takes no `enable` directive for them yet). `WG` is
// the op file's constant.
//
// Two steps instead of log2(WG) barrier rounds: each subgroup reduces its threads' values in
// registers (subgroupAdd / subgroupMax) and its first lane stores the result in `red`, slot
// subgroup_id; after one barrier, every subgroup combines the num_subgroups partials the same
// way (lane i folds slots i, i + size, ... in order, then one subgroup reduction), so all
// threads get the same bits without a broadcast. The subgroup reductions' internal order is the
// hardware's, fixed for a device: results are reproducible run to run, and within SPEC's
// tolerances of the workgroup tree's (not bit-identical to it).
//
// Every thread of the workgroup must call these in uniform control flow (they hold barriers).

var<workgroup> red: array<f32, WG>;

struct Lane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
}

fn reduce_max(lane: Lane, v: f32) -> f32 {
    let s = subgroupMax(v);
    if (lane.sg_lane == 0u) {
        red[lane.sg_id] = s;
    }
    workgroupBarrier();
    // Every lane starts from a real partial (no identity that could differ from max's).
    var t = red[min(lane.sg_lane, lane.sg_count - 1u)];
    for (var i = lane.sg_lane + lane.sg_size; i < lane.sg_count; i += lane.sg_size) {
        t = max(t, red[i]);
    }
    let r = subgroupMax(t);
    workgroupBarrier();
    return r;
}

fn reduce_sum(lane: Lane, v: f32) -> f32 {
    let s = subgroupAdd(v);
    if (lane.sg_lane == 0u) {
        red[lane.sg_id] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var i = lane.sg_lane; i < lane.sg_count; i += lane.sg_size) {
        t += red[i];
    }
    let r = subgroupAdd(t);
    workgroupBarrier();
    return r;
}
