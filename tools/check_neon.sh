#!/usr/bin/env bash
# Fails unless the aarch64 build's depthwise kernel, Winograd transforms and GEMM epilogue
# (src/nn/conv.rs, src/nn/conv/winograd.rs) are NEON vector code rather than scalar loops. Run
# by `make test-arm64` on the library's test binary.
#
#   tools/check_neon.sh AARCH64_BINARY
#
# Needs aarch64 binutils (Debian gcc-aarch64-linux-gnu brings them; OBJDUMP/NM override).
set -euo pipefail
bin=${1:?usage: $0 AARCH64_BINARY}
objdump=${OBJDUMP:-aarch64-linux-gnu-objdump}
nm=${NM:-aarch64-linux-gnu-nm}
symbols=$("$nm" -C -S --defined-only "$bin")
status=0

# The first of the demangled names given (space-separated) that the binary defines.
first_defined() {
    local name
    for name in "$@"; do
        if grep -qE " [tT] ${name}\$" <<<"$symbols"; then
            echo "$name"
            return
        fi
    done
}

# check FUNCTION REGEX MIN WHAT: FUNCTION's code has at least MIN instructions matching REGEX.
check() {
    local name=$1 regex=$2 min=$3 what=$4 addr size count
    if [ -z "$name" ]; then
        echo "check_neon: kernel symbol not found in ${bin} (renamed? update tools/check_neon.sh)" >&2
        status=1
        return
    fi
    read -r addr size _ < <(grep -E " [tT] ${name}\$" <<<"$symbols" | head -n 1)
    count=$("$objdump" -d --no-show-raw-insn "$bin" \
        --start-address=$((16#$addr)) --stop-address=$((16#$addr + 16#$size)) \
        | grep -cE "$regex" || true)
    if [ "$count" -ge "$min" ]; then
        echo "check_neon: ${name}: ${count} ${what} (>= ${min}): ok"
    else
        echo "check_neon: ${name}: ${count} ${what}, expected >= ${min}: not vectorised" >&2
        status=1
    fi
}

v4s='v[0-9]+\.4s'
# Depthwise: 3x3 and 5x5 taps unrolled, two 4-lane accumulators per 8 outputs, so at least
# (9 + 25) x 2 vector FMAs, and the activation as 4-lane compares.
depthwise=$(first_defined 'liveness::nn::conv::depthwise_portable' 'liveness::nn::conv::depthwise_run')
check "$depthwise" "fmla[[:space:]]+${v4s}" 68 'vector FMAs (fmla .4s)'
check "$depthwise" "fcm(lt|gt)[[:space:]]+${v4s}" 2 'vector compares (fcmlt/fcmgt .4s)'
# Winograd input transforms, eight tiles at a time: their adds and subtracts as 4-lane vectors
# (instructions in the compiled functions, Neoverse N1 build: F(2x2) 44, F(4x4) 92).
winograd2=$(first_defined 'liveness::nn::conv::winograd::input2_portable')
check "$winograd2" "f(add|sub)[[:space:]]+${v4s}" 32 'vector adds/subtracts (fadd/fsub .4s)'
winograd4=$(first_defined 'liveness::nn::conv::winograd::input4_portable')
check "$winograd4" "f(add|sub)[[:space:]]+${v4s}" 64 'vector adds/subtracts (fadd/fsub .4s)'
# GEMM epilogue (bias, leaky/PReLU slope, clamp) as 4-lane compares and selects: inside the
# portable register-tiled GEMM kernel where there is one, else in the epilogue pass after
# the `gemm` crate's multiply.
epilogue=$(first_defined 'liveness::nn::conv::gemm_portable' 'liveness::nn::conv::apply_epilogue' \
    'liveness::nn::conv::FusedConv2d::gemm_epilogue')
check "$epilogue" "fcm(lt|gt)[[:space:]]+${v4s}" 2 'vector compares (fcmlt/fcmgt .4s)'
check "$epilogue" "(bit|bif|bsl)[[:space:]]+v[0-9]+\.16b" 2 'vector selects (bit/bif/bsl)'
if [ "$epilogue" = 'liveness::nn::conv::gemm_portable' ]; then
    check "$epilogue" "fmla[[:space:]]+${v4s}" 8 'vector FMAs (fmla .4s)'
fi
exit $status
