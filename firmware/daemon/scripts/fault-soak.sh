#!/usr/bin/env bash
# The fault tests at full size (CI runs them smaller): 200 runs of qualmd killed with SIGKILL at
# random moments, 100 runs of qualmd killed while it uploads to nginx (needs nginx), and 100,000
# random inputs for each bad-input property test.
# Usage: bash firmware/daemon/scripts/fault-soak.sh [kill runs] [proptest cases] [uplink kills]
set -euo pipefail
cd "$(dirname "$0")/../../.."

kills="${1:-200}"
cases="${2:-100000}"
uplink_kills="${3:-100}"

echo "--- $kills runs killed at random moments"
QUALMD_KILL_RUNS="$kills" cargo test --release -p qualm-daemon --test qualmd_faults \
    kill_at_random_moments -- --nocapture

echo "--- $uplink_kills runs of qualmd killed while uploading"
QUALM_REQUIRE_SERVERS=1 QUALMD_UPLINK_KILLS="$uplink_kills" cargo test --release -p qualm-daemon \
    --test uplink_servers qualmd_killed_during_uploads -- --nocapture

echo "--- $cases cases per bad-input property"
PROPTEST_CASES="$cases" cargo test --release -p qualm-daemon --test bad_input

echo "--- $cases cases for the policy against its references"
PROPTEST_CASES="$cases" cargo test --release -p qualm-core --test policy_reference
