#!/usr/bin/env bash
# Runs dualgate's whole test suite on a fresh machine with Go installed:
# installs the programs the end-to-end tests drive (Mosquitto, HAProxy, redis-server) when
# they are missing, then checks formatting, vet, staticcheck and runs every
# test with the race detector. Tests start their own services on free
# loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== staticcheck"
go tool -modfile=tools/go.mod staticcheck ./...

echo "== go test -race"
go test -race -count=1 -timeout 20m "$@" ./...

# gnet's own suite on the patched copy, CI-sized (third_party/gnet/PATCHES.md
# says what it covers): everything but the long matrix tests and those that
# use a real network interface (bind to eth0, multicast), then the
# matrix for TCP and unix sockets on both accept paths, level- and
# edge-triggered, and the client for TCP. The whole suite takes ~7 min:
#   (cd third_party/gnet && go test ./...)
echo "== third_party/gnet (patched): gnet's own tests"
(
  cd third_party/gnet
  go vet ./...
  # pkg/pool/byteslice checks that sync.Pool hands the same array back,
  # which the race detector's sync.Pool deliberately does not always do:
  # it runs without -race.
  go test -race -count=1 -timeout 10m -skip 'TestServer|TestClient|TestSimServer|TestStreamProxyServer|TestServeGC|TestUDPProxyServer|TestBindToDevice|Multicast' $(go list ./... | grep -v '/pkg/pool/byteslice$')
  go test -count=1 ./pkg/pool/byteslice
  go test -race -count=1 -timeout 10m -run 'TestServer/^poll-(LT|ET|reuseport-LT|reuseport-ET)$/^(tcp|unix)$' .
  go test -race -count=1 -timeout 10m -run 'TestClient/^poll-(LT|ET)$/^tcp$' .
  # the build tags dualgate does not use still build, and the parts the
  # patches touch in them pass: the gc_opt matrix (patch 16) and the
  # poll_opt reactors (patch 15)
  go vet -tags gc_opt .
  go vet -tags poll_opt .
  go test -count=1 -tags gc_opt -run 'TestConnMatrix|TestConnStructSize' .
  go test -count=1 -tags poll_opt -timeout 10m -run 'TestServer/^poll-LT$/^tcp$|TestLatestReadStaysWithItsConnection' .
)
