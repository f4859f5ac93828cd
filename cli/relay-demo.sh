#!/usr/bin/env bash
# The main job: a local relay (embedded SQLite) and three phones of one
# clinic syncing through it, each phone a `handoff` CLI with its own
# encrypted store. They work offline, race, sync, and end with the same view.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v make >/dev/null || ! perl -MFindBin -MIPC::Cmd -e1 2>/dev/null || ! command -v cc >/dev/null; then
    # SQLCipher's vendored OpenSSL builds with perl (the full one, not
    # perl-base: its Configure loads FindBin and IPC::Cmd), make and a C
    # compiler.
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -qq && $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc make perl
fi
cargo build --release --locked -q -p handoff-server -p handoff-cli
bin=target/release
work=$(mktemp -d)
relay_pid=""
cleanup() { [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

server() { "$bin/handoff-server" --db "$work/relay.db" "$@"; }
phone() { local who=$1; shift; "$bin/handoff" --store "$work/$who.db" "$@"; }
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

say "The practice admin creates the team on the relay and invites three people"
out=$(server create-team --name "Riverside Family Practice" --admin max --admin-name "Max (manager)" --role manager)
team=$(sed -n 's/^team //p' <<<"$out")
max_invite=$(sed -n 's/^invite //p' <<<"$out")
ana_invite=$(server invite --team "$team" --user ana --name "Ana (assistant)" --role clinical_assistant)
fay_invite=$(server invite --team "$team" --user fay --name "Fay (front desk)" --role front_desk)
echo "team $team; invites issued (one-time, expire in 72 h)"

HANDOFF_LOG=warn "$bin/handoff-server" --db "$work/relay.db" serve --bind 127.0.0.1:0 >"$work/relay.out" &
relay_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/relay.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/relay.out")
[ -n "$url" ] || { echo "the relay did not start"; exit 1; }
echo "relay listening on $url"

# Invites and patient details go in by the environment or standard input
# (`-`), not as arguments: those show in `ps` and stay in shell history.
say "Each phone enrols with its invite"
HANDOFF_INVITE="$max_invite" phone max enrol --relay "$url"
HANDOFF_INVITE="$ana_invite" phone ana enrol --relay "$url"
HANDOFF_INVITE="$fay_invite" phone fay enrol --relay "$url"

phone max sync >/dev/null  # learns who else enrolled

say "Max (manager) delegates a follow-up call to Ana and a booking to the front-desk pool"
call=$(phone max delegate --title "Post-op follow-up call" --outcome "Reach the patient within 48 h, document recovery" --to ana --due-hours 4 --patient - <<<"(demo patient)")
booking=$(phone max delegate --title "Book the 6-week check" --pool front_desk)
phone max sync; phone ana sync; phone fay sync

say "Everyone goes offline. Ana logs two calls and submits; Fay claims the booking while Max assigns it to Ana"
phone ana call "$call" --outcome no_answer
phone ana call "$call" --outcome reached --notes "recovering well"
phone ana submit "$call" --note "reached on the second try"
phone fay claim "$booking"
phone max assign "$booking" ana

say "Signal comes back, in no particular order"
phone fay sync; phone max sync; phone ana sync; phone max sync

say "Max reviews and approves"
phone max inbox
phone max approve "$call" --note "thanks"
phone max sync; phone ana sync; phone fay sync

for who in max ana fay; do
    say "$who's phone"
    phone "$who" queue
    echo "needs attention:"; phone "$who" attention
done
say "The follow-up call, as Ana's phone shows it"
phone ana show "$call"
