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

// One attempt of one firing, in a plan's run history (forsun-box addition).
struct ForsunRun {
    1: i64 due_ms,
    2: i64 started_ms,
    3: i32 duration_ms,
    4: i16 attempt,
    // 1 ok, -1 failed, 2 failed and will be retried
    5: i16 result,
    6: string error,
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

    // forsun-box additions below: new methods only, forsun's are unchanged.

    // Stop a plan firing until resumed.
    ForsunPlan pause(1: string key) throws (1: ForsunPlanError err),

    // Let a paused plan fire again from its next occurrence after now.
    ForsunPlan resume(1: string key) throws (1: ForsunPlanError err),

    // Run the plan's action once now, outside its schedule; returns its status.
    i16 fire(1: string key) throws (1: ForsunPlanError err),

    // The plan's most recent runs, newest first (at most `limit`; <= 0: 50).
    list<ForsunRun> getRuns(1: string key, 2: i32 limit)
        throws (1: ForsunPlanError err),

    // The plan's next `n` firings (unix ms; n <= 0: 5).
    list<i64> preview(1: string key, 2: i16 n) throws (1: ForsunPlanError err),

    // A plan on a cron expression (5 or 6 fields) in an IANA time zone
    // ("": the server's), count times (0: forever); replaces the same key.
    ForsunPlan createCron(1: string key, 2: string cron, 3: string action,
        4: map<string, string> params, 5: string timezone, 6: i16 count)
        throws (1: ForsunPlanError err),

    // A one-shot plan at one instant (unix ms); replaces the same key.
    ForsunPlan createAt(1: string key, 2: i64 at_ms, 3: string action,
        4: map<string, string> params) throws (1: ForsunPlanError err),
}
