// forsun's Thrift interface (wire contract: FORSUN_COMPAT.md section 3).
//
// Plain (unframed) binary protocol. Field ids, types, requiredness and
// defaults are what existing forsun clients send and expect; do not change
// them. The Python code next to this file is generated from it:
//     make thrift
// (Debian's thrift-compiler) and committed, so running needs no compiler.

exception ForsunPlanError {
    1: i16 code,
    2: string message,
}

struct ForsunPlan {
    1: required bool is_time_out,
    2: required string key,
    3: required i16 second,
    4: i16 minute = -1,
    5: i16 hour = -1,
    6: i16 day = -1,
    7: i16 month = -1,
    8: i16 week = -1,
    9: required i32 next_time,
    10: i16 status = 0,
    11: i16 count = 0,
    12: i16 current_count = 0,
    13: i32 last_timeout = 0,
    14: string action = "shell",
    15: map<string, string> params = {},
}

service Forsun {
    // Liveness: returns 0.
    i16 ping(),

    // A calendar-mode plan (-1 = any); replaces a plan with the same key.
    ForsunPlan create(1: string key, 2: i16 second, 3: i16 minute = -1,
        4: i16 hour = -1, 5: i16 day = -1, 6: i16 month = -1, 7: i16 week = -1,
        8: string action = "shell", 9: map<string, string> params = {})
        throws (1: ForsunPlanError err),

    // A delay-mode plan: every interval, count times (0: forever).
    ForsunPlan createTimeout(1: string key, 2: i16 second, 3: i16 minute = -1,
        4: i16 hour = -1, 5: i16 day = -1, 6: i16 month = -1, 7: i16 week = -1,
        8: i16 count = 1, 9: string action = "shell",
        10: map<string, string> params = {})
        throws (1: ForsunPlanError err),

    ForsunPlan remove(1: string key) throws (1: ForsunPlanError err),

    ForsunPlan get(1: string key) throws (1: ForsunPlanError err),

    // Plans firing at the current second.
    list<ForsunPlan> getCurrent(),

    // Plans firing at second `timestamp` (unix seconds; 0: now).
    list<ForsunPlan> getTime(1: i32 timestamp),

    list<string> getKeys(1: string prefix),

    // What the `thrift` action calls on a target server.
    void forsun_call(1: string key, 2: i32 ts, 3: map<string, string> params),

    map<string, string> info(),
}
