#!/usr/bin/env bash
# tests/scripts/build-images.sh - builds Headroom's two container images FROM scratch
# (images/Containerfile, docs/images.md): headroom-scaler and headroom-provisioner (with the static
# headroom-warm helper that image-warming pods copy out of it).
#
# Steps, each printed as it starts:
#   1. cargo build --release (or the dev profile with --debug) of the two binaries, and of
#      headroom-warm statically linked (crt-static, its own --target folder);
#   2. a build context per image under $HEADROOM_CACHE/images/context: the binary, every shared
#      library `ldd` names and the dynamic loader at their paths, /etc/passwd and /etc/group with
#      user 65532, /etc/nsswitch.conf, the CA bundle;
#   3. buildah build of each stage of images/Containerfile, kept in buildah's local storage as
#      localhost/headroom-<name>:<tag> and written as an OCI archive to
#      $HEADROOM_CACHE/images/headroom-<name>-<tag>.oci.tar;
#   4. with --push REGISTRY, buildah push to REGISTRY/headroom-<name>:<tag> (credentials: `buildah
#      login REGISTRY` first); with --registry, a local in-memory registry (go-containerregistry's,
#      built once from the Go module proxy) is started on 127.0.0.1:5000 and the images pushed there.
#
#   bash tests/scripts/build-images.sh                  # both images, release profile
#   bash tests/scripts/build-images.sh --debug          # the dev profile (reuses the test build)
#   bash tests/scripts/build-images.sh --only scaler    # one image
#   bash tests/scripts/build-images.sh --no-build       # reuse the binaries already built
#   bash tests/scripts/build-images.sh --push registry.example.com/headroom --tag 0.1.0
#   bash tests/scripts/build-images.sh --registry       # and serve them on 127.0.0.1:5000
#
# Needs buildah (Debian: apt-get install buildah; installed when missing and run as root). Where
# Docker is what you have, `docker build -f images/Containerfile --target scaler
# $HEADROOM_CACHE/images/context` takes the same context.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"
cd "$HEADROOM_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HEADROOM_CACHE/target}"

profile=release
build=true
only=""
push=""
tag="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
registry=false
registry_addr=127.0.0.1:5000
registry_version=v0.22.1

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}
die() {
    echo "build-images.sh: $*" >&2
    exit 1
}
step() { printf '==> %s\n' "$*"; }

while [ $# -gt 0 ]; do
    case "$1" in
    --debug) profile=debug ;;
    --no-build) build=false ;;
    --only)
        [ $# -ge 2 ] || die "--only needs scaler or provisioner"
        only="$2"
        shift
        ;;
    --push)
        [ $# -ge 2 ] || die "--push needs a registry, e.g. registry.example.com/headroom"
        push="$2"
        shift
        ;;
    --tag)
        [ $# -ge 2 ] || die "--tag needs a value"
        tag="$2"
        shift
        ;;
    --registry) registry=true ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

case "$only" in
"") names=(scaler provisioner) ;;
scaler | provisioner) names=("$only") ;;
*) die "--only takes scaler or provisioner, not '$only'" ;;
esac
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "'$tag' is not a valid image tag"

if ! command -v buildah >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "buildah is missing: apt-get install buildah (as root)"
    step "installing buildah (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah >/dev/null
fi

arch="$(uname -m)"
host_target="${arch}-unknown-linux-gnu"
bin_dir="$CARGO_TARGET_DIR/$profile"
warm_bin="$CARGO_TARGET_DIR/$host_target/$profile/headroom-warm"
cargo_profile=()
[ "$profile" = release ] && cargo_profile=(--release)

if $build; then
    if [ "$profile" = debug ]; then
        # Exactly the test command's build: the same feature set, so nothing compiles twice.
        step "cargo build --workspace --all-targets (the test build)"
        cargo build --workspace --all-targets --locked
    else
        pkgs=()
        for n in "${names[@]}"; do pkgs+=(-p "headroom-$n"); done
        step "cargo build --release ${pkgs[*]}"
        cargo build --release --locked "${pkgs[@]}"
    fi
    if [[ " ${names[*]} " == *" provisioner "* ]]; then
        step "cargo build headroom-warm, static (crt-static, --target $host_target)"
        RUSTFLAGS='-C target-feature=+crt-static' \
            cargo build "${cargo_profile[@]}" --locked --target "$host_target" -p headroom-warm
    fi
fi

ctx="$HEADROOM_CACHE/images/context"
out="$HEADROOM_CACHE/images"
mkdir -p "$out"

# stage_libs BINARY ROOT - copies the shared libraries BINARY needs, and the loader, under ROOT.
stage_libs() {
    local bin="$1" root="$2" lib
    ldd "$bin" >/dev/null 2>&1 || die "ldd cannot read $bin"
    # Lines look like "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)" or
    # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
    while read -r lib; do
        [ -n "$lib" ] || continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}

step "staging the build context in $ctx"
rm -rf "$ctx"
mkdir -p "$ctx/common/etc/ssl/certs" "$ctx/common/tmp"
cp images/rootfs/etc/passwd images/rootfs/etc/group images/rootfs/etc/nsswitch.conf "$ctx/common/etc/"
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || die "no CA bundle at $ca (Debian: apt-get install ca-certificates)"
cp "$ca" "$ctx/common/etc/ssl/certs/"
for n in "${names[@]}"; do
    bin="$bin_dir/headroom-$n"
    [ -x "$bin" ] || die "$bin is missing: run without --no-build"
    mkdir -p "$ctx/$n/usr/local/bin"
    cp "$bin" "$ctx/$n/usr/local/bin/"
    stage_libs "$bin" "$ctx/$n"
    if [ "$n" = provisioner ]; then
        [ -x "$warm_bin" ] || die "$warm_bin is missing: run without --no-build"
        # ldd says "statically linked" (static-pie) or "not a dynamic executable" for a
        # static binary, and names libraries otherwise.
        if ldd "$warm_bin" 2>&1 | grep -q '=>'; then
            die "$warm_bin is dynamically linked; it must be static to run in other images"
        fi
        cp "$warm_bin" "$ctx/$n/usr/local/bin/"
    fi
    if [ "$profile" = release ]; then
        strip "$ctx/$n/usr/local/bin/"* 2>/dev/null || true
    fi
done

for n in "${names[@]}"; do
    image="localhost/headroom-$n:$tag"
    step "buildah build --target $n -> $image"
    buildah build --quiet --layers=false --target "$n" -t "$image" -f images/Containerfile "$ctx" >/dev/null
    archive="$out/headroom-$n-$tag.oci.tar"
    rm -f "$archive"
    buildah push --quiet "$image" "oci-archive:$archive:headroom-$n:$tag" >/dev/null
    size="$(du -h "$archive" | cut -f1)"
    echo "    $image  (OCI archive $archive, $size)"
done

if $registry; then
    reg_home="$HEADROOM_CACHE/registry-$registry_version"
    if [ ! -x "$reg_home/bin/registry" ]; then
        step "building go-containerregistry's registry $registry_version (Go module proxy)"
        GOBIN="$reg_home/bin.tmp" go install "github.com/google/go-containerregistry/cmd/registry@$registry_version"
        mv "$reg_home/bin.tmp" "$reg_home/bin"
    fi
    if ! curl -fsS "http://$registry_addr/v2/" >/dev/null 2>&1; then
        # go-containerregistry's registry keeps blobs in memory and listens on localhost only;
        # it ends with the session (nohup keeps it past this script).
        step "starting the registry on $registry_addr (in memory, log $out/registry.log)"
        nohup "$reg_home/bin/registry" -port "${registry_addr##*:}" >"$out/registry.log" 2>&1 &
        for _ in $(seq 50); do
            curl -fsS "http://$registry_addr/v2/" >/dev/null 2>&1 && break
            sleep 0.1
        done
        curl -fsS "http://$registry_addr/v2/" >/dev/null 2>&1 || die "the registry did not start: $(tail -n 5 "$out/registry.log")"
    fi
    [ -n "$push" ] || push="$registry_addr/headroom"
fi

if [ -n "$push" ]; then
    tls=()
    case "$push" in 127.0.0.1:* | localhost:*) tls=(--tls-verify=false) ;; esac
    for n in "${names[@]}"; do
        step "buildah push -> $push/headroom-$n:$tag"
        buildah push --quiet "${tls[@]}" "localhost/headroom-$n:$tag" "docker://$push/headroom-$n:$tag" >/dev/null
    done
fi
step "done"
