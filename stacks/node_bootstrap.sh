#!/bin/bash
# User data of one RabbitMQ node of the ClusterStack (Amazon Linux 2023).
#
# The stack installs this file as /usr/local/sbin/rabbitmq-node, writes the node's settings to
# /etc/rabbitmq-node.env and runs `rabbitmq-node bootstrap` once, at first boot. A systemd timer then
# runs `rabbitmq-node metrics` every minute, and a systemd service `rabbitmq-node watch-lifecycle`
# waits for the Auto Scaling group's termination lifecycle hook. No secret passes through user data:
# the node reads the Erlang cookie and the credentials from Secrets Manager with its instance role.
#
# A node's life (docs/deploy.md, "Replace or upgrade a node"):
#   boot   -> (held by the launch lifecycle hook, heartbeating) join the existing cluster (explicitly if
#             peer discovery left the node alone; only the first node by name of a group where no cluster
#             runs forms one), forget members whose instance is gone, grow quorum queues that lost a
#             member onto the new node, wait until losing any one node is safe again with caught-up
#             members, and only then complete the launch action (CONTINUE) and signal CloudFormation. A
#             boot that fails after joining leaves the cluster again, then abandons the launch action.
#   leave  -> (termination lifecycle hook) grow each quorum queue of this node onto a spare node (best
#             effort), wait until every other member caught up and this node is not quorum- or
#             sync-critical (asked again, heartbeating, for up to 24 h), drain it, remove its quorum
#             members, stop it, forget it from a peer, wait until the quorum queues that lost it regrew
#             (onto the node with the fewest members), complete the action.
#
# Sourcing this file only defines functions: the infra tests source it and call the render_* functions
# to check what a node would write, and run the membership steps against real local nodes.
set -Eeuo pipefail

readonly SETTINGS_FILE=${RABBITMQ_NODE_SETTINGS:-/etc/rabbitmq-node.env}
BALANCER_USER_FILE=${BALANCER_USER_FILE:-/etc/rabbitmq-node.balancer-user}
readonly DATA_DIR=/var/lib/rabbitmq
readonly CONF_DIR=/etc/rabbitmq
readonly IMDS=http://169.254.169.254/latest
readonly SIGNING_KEYS=https://github.com/rabbitmq/signing-keys/releases/download/3.0

log() { printf '%s rabbitmq-node: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

load_settings() {
    if [[ -r $SETTINGS_FILE ]]; then
        # shellcheck source=/dev/null
        source "$SETTINGS_FILE"
    fi
    : "${CLUSTER_NAME:?CLUSTER_NAME is not set}" "${AWS_REGION:?AWS_REGION is not set}"
    : "${COOKIE_SECRET_ARN:?COOKIE_SECRET_ARN is not set}" "${ADMIN_SECRET_ARN:?ADMIN_SECRET_ARN is not set}"
    : "${RABBITMQ_VERSION:?RABBITMQ_VERSION is not set}" "${ERLANG_VERSION:?ERLANG_VERSION is not set}"
    QUEUE_TYPE=${QUEUE_TYPE:-quorum}
    NODE_COUNT=${NODE_COUNT:-3}
    DATA_DEVICE=${DATA_DEVICE:-/dev/sdf}
    METRICS_NAMESPACE=${METRICS_NAMESPACE:-RabbitMQ}
    export AWS_DEFAULT_REGION=$AWS_REGION
}

# --- what a node writes (pure functions of the settings) --------------------------------------------

render_rabbitmq_conf() {
    cat <<EOF
## Written by rabbitmq-node (stacks/node_bootstrap.sh) at first boot.
cluster_name = ${CLUSTER_NAME}

## Peers are the instances of this node's Auto Scaling group, addressed by their private DNS names
## (the node name is rabbit@<private DNS name>, see rabbitmq-env.conf).
cluster_formation.peer_discovery_backend = aws
cluster_formation.aws.region = ${AWS_REGION}
cluster_formation.aws.use_autoscaling_group = true
cluster_formation.aws.use_private_ip = false
cluster_formation.discovery_retry_limit = 30
cluster_formation.discovery_retry_interval = 10000
## A leaving node is forgotten by its termination hook, a dead one by the next node that boots
## (rabbitmq-node bootstrap), both after checking the Auto Scaling group: never automatically here.
cluster_formation.node_cleanup.only_log_warning = true

## Three nodes in three availability zones: the minority side of a partition pauses.
cluster_partition_handling = pause_minority

listeners.tcp.default = 5672
management.tcp.port = 15672
loopback_users.guest = true

vm_memory_high_watermark.relative = 0.4
disk_free_limit.relative = 1.0
EOF
    if version_at_least 3.13; then
        cat <<EOF

## Quorum queues regain their replicas on their own after a member left (3.13+): the node grows any
## queue below the target size onto a node that has none of its members.
quorum_queue.continuous_membership_reconciliation.enabled = true
quorum_queue.continuous_membership_reconciliation.target_group_size = 3
EOF
    fi
}

# Succeeds when RABBITMQ_VERSION is at least $1 (major.minor).
version_at_least() {
    local want_major=${1%%.*} want_minor=${1#*.} major minor rest
    major=${RABBITMQ_VERSION%%.*}
    rest=${RABBITMQ_VERSION#*.}
    minor=${rest%%.*}
    ((major > want_major || (major == want_major && minor >= want_minor)))
}

render_enabled_plugins() {
    printf '%s\n' '[rabbitmq_management,rabbitmq_peer_discovery_aws].'
}

# $1: the instance's private DNS name, which the AWS peer discovery plugin reports for it.
render_rabbitmq_env() {
    printf 'NODENAME=rabbit@%s\nUSE_LONGNAME=true\n' "$1"
}

render_yum_repo() {
    local section kind path key
    for section in erlang:erlang/el/9/\$basearch erlang-noarch:erlang/el/9/noarch \
        server:rabbitmq/el/9/\$basearch server-noarch:rabbitmq/el/9/noarch; do
        kind=${section%%:*}
        path=${section#*:}
        case $kind in
            erlang*) key=cloudsmith.rabbitmq-erlang.E495BB49CC4BBE5B.key ;;
            *) key=cloudsmith.rabbitmq-server.9F4587F226208342.key ;;
        esac
        cat <<EOF
[rabbitmq-${kind}]
name=rabbitmq-${kind}
baseurl=https://yum1.rabbitmq.com/${path}
        https://yum2.rabbitmq.com/${path}
repo_gpgcheck=1
gpgcheck=1
enabled=1
gpgkey=${SIGNING_KEYS}/${key}
       ${SIGNING_KEYS}/rabbitmq-release-signing-key.asc
sslverify=1
metadata_expire=300
type=rpm-md

EOF
    done
}

# stdin: `rabbitmq-diagnostics status --formatter json` of this node.
# stdout: the --metric-data of `aws cloudwatch put-metric-data` (one dimension: ClusterName).
render_metric_data() {
    jq -c --arg cluster "$CLUSTER_NAME" '
        def alarmed($resource): [.alarms[]? | select((.resource? // .) | tostring | contains($resource))]
            | if length > 0 then 1 else 0 end;
        [
          {MetricName: "MemoryUsedOfWatermark", Unit: "Percent",
           Value: (100 * (.memory.total[.vm_memory_calculation_strategy] // .memory.total.rss)
                   / .vm_memory_high_watermark_limit)},
          {MetricName: "DiskFreeOverLimit", Unit: "None", Value: (.disk_free / .disk_free_limit)},
          {MetricName: "MemoryAlarm", Unit: "Count", Value: alarmed("memory")},
          {MetricName: "DiskAlarm", Unit: "Count", Value: alarmed("disk")}
        ] | map(. + {Dimensions: [{Name: "ClusterName", Value: $cluster}]})'
}

# stdin: `rabbitmqctl cluster_status --formatter json`. stdout: --metric-data with the cluster's view from
# this node: running members, members that do not run (stale or stopped: dead votes in pause_minority),
# partitions seen, and nodes in maintenance (drained).
render_cluster_metric_data() {
    jq -c --arg cluster "$CLUSTER_NAME" '
        ((.disk_nodes // []) + (.ram_nodes // [])) as $members
        | (.running_nodes // []) as $running
        | [
            {MetricName: "RunningNodes", Unit: "Count", Value: ($running | length)},
            {MetricName: "ClusterMembers", Unit: "Count", Value: ($members | length)},
            {MetricName: "MembersNotRunning", Unit: "Count", Value: ($members - $running | length)},
            {MetricName: "Partitions", Unit: "Count", Value: ([.partitions // {} | .[]] | length)},
            {MetricName: "NodesInMaintenance", Unit: "Count",
             Value: ([.maintenance_status // {} | .[] | select(. != "not under maintenance")] | length)}
          ] | map(. + {Dimensions: [{Name: "ClusterName", Value: $cluster}]})'
}

render_metrics_service() {
    cat <<'EOF'
[Unit]
Description=Publish RabbitMQ memory and disk figures to CloudWatch
After=rabbitmq-server.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/rabbitmq-node metrics
EOF
}

render_metrics_timer() {
    cat <<'EOF'
[Unit]
Description=Publish RabbitMQ memory and disk figures every minute

[Timer]
OnBootSec=2min
OnUnitActiveSec=1min
AccuracySec=5s

[Install]
WantedBy=timers.target
EOF
}

# --- cluster membership: the steps of a node's boot and of its termination hook ----------------------
# Every call names its node (-n): the same functions run on a node, against a peer, and in the tests
# against local nodes. peer_nodes (the Auto Scaling group's instances as node names) is the only AWS
# input; the tests replace it.

ctl() {
    local node=$1
    shift
    rabbitmqctl -q -n "$node" "$@"
}

queues_ctl() {
    local node=$1
    shift
    rabbitmq-queues -q -n "$node" "$@"
}

upgrade_ctl() {
    local node=$1
    shift
    rabbitmq-upgrade -q -n "$node" "$@"
}

majority() { echo $(($1 / 2 + 1)); }

# stdin: `cluster_status --formatter json`; stdout: members (disk and RAM nodes), one a line.
cluster_members() { jq -r '(.disk_nodes // []) + (.ram_nodes // []) | .[]'; }

# stdin: `cluster_status --formatter json`; stdout: the number of running members.
running_count() { jq '.running_nodes // [] | length'; }

# A peer whose cluster this lone node should join: one whose cluster already runs two nodes or more, else
# a lone peer whose name sorts first (lone nodes booting together then converge on one of them instead
# of pairing off). Fails when no peer answers.
cluster_to_join() {
    local me=$1 peer status
    while read -r peer; do
        [[ -n $peer && $peer != "$me" ]] || continue
        status=$(ctl "$peer" cluster_status --formatter json 2>/dev/null) || continue
        if (($(running_count <<<"$status") > 1)) || [[ $peer < $me ]]; then
            printf '%s\n' "$peer"
            return 0
        fi
    done < <(peer_nodes)
    return 1
}

# Makes node $1 a running member of a cluster with a majority of NODE_COUNT running members. A node that
# is alone (peer discovery found nobody, or formed before its peers answered) joins a peer's cluster; a
# fresh node has no data of its own, so the reset loses nothing. Fails after JOIN_TIMEOUT seconds.
join_cluster() {
    local me=$1 status peer needed deadline=$((SECONDS + ${JOIN_TIMEOUT:-900}))
    needed=$(majority "$NODE_COUNT")
    while :; do
        status=$(ctl "$me" cluster_status --formatter json)
        if (($(running_count <<<"$status") >= needed)); then
            log "$me runs in a cluster of $(running_count <<<"$status") running node(s) (majority $needed)"
            return 0
        fi
        if [[ $(cluster_members <<<"$status") == "$me" ]] && peer=$(cluster_to_join "$me"); then
            log "$me is alone: joining the cluster of $peer"
            ctl "$me" stop_app
            ctl "$me" reset
            ctl "$me" join_cluster "$peer"
            ctl "$me" start_app
            continue
        fi
        if ((SECONDS >= deadline)); then
            log "$me did not reach a cluster with $needed running node(s): $(jq -c '.running_nodes' <<<"$status")"
            return 1
        fi
        sleep "${POLL_SECONDS:-5}"
    done
}

# Members that are neither running nor instances of the group any more (an instance that died without
# running its termination hook): forgotten, because pause_minority counts them as votes. Refuses to act
# when the group's list does not contain node $1 itself (an empty or failed lookup must forget nobody).
forget_departed_members() {
    local me=$1 status group gone
    group=$(peer_nodes | jq -R . | jq -sc 'map(select(length > 0))')
    if ! jq -e --arg me "$me" 'index($me) != null' <<<"$group" >/dev/null; then
        log "the group's node list $group does not contain $me: forgetting nobody"
        return 0
    fi
    status=$(ctl "$me" cluster_status --formatter json)
    for gone in $(jq -r --argjson group "$group" \
        '((.disk_nodes // []) + (.ram_nodes // [])) - (.running_nodes // []) - $group | .[]' <<<"$status"); do
        log "forgetting $gone: not running and no longer an instance of the group"
        queues_ctl "$me" shrink "$gone" >/dev/null
        ctl "$me" forget_cluster_node "$gone"
    done
}

vhost_names() { ctl "$1" list_vhosts name --formatter json | jq -r '.[].name'; }

# Every queue as seen from node $1, one JSON object a line: vhost, name, type, members and online (quorum),
# mirrors and synchronised mirrors (classic, 3.x: 4.x has no mirroring). One CLI call per vhost.
queue_snapshot() {
    local via=$1 vhost vhosts columns=(name type members online)
    version_at_least 4.0 || columns+=(slave_pids synchronised_slave_pids)
    vhosts=$(vhost_names "$via") || return 1
    for vhost in $vhosts; do
        ctl "$via" list_queues -p "$vhost" "${columns[@]}" --formatter json |
            jq -c --arg vhost "$vhost" '.[] | . + {vhost: $vhost}' || return 1
    done
}

# jq: a mirrored classic queue (3.x) with a mirror not synchronised yet.
MIRRORS_UNSYNCHRONISED='def mirrors_unsynchronised: .type == "classic" and (.slave_pids | type) == "array"
    and (.synchronised_slave_pids | length) < (.slave_pids | length);'

# stdin: queue_snapshot; $1: the number of running nodes. stdout: vhost/name of every queue that losing one
# more node would cost its quorum or its last synchronised copy, or that lost a member not yet regrown
# (an even member count below the running nodes). It counts online quorum members: quorum_queues_lagging
# then asks each quorum queue which of them caught up.
queues_at_risk() {
    jq -r --argjson running "$1" "$MIRRORS_UNSYNCHRONISED"'
        select(
            (.type == "quorum"
             and (((.members | length) >= 3 and (.online | length) < ((.members | length) / 2 | floor) + 2)
                  or ((.members | length) % 2 == 0 and (.members | length) < $running)))
            or mirrors_unsynchronised)
        | "\(.vhost)/\(.name)"'
}

# jq: caught_up($target), the members of a queue's quorum_status rows (`rabbitmq-queues quorum_status
# --formatter json`) that caught up with commit index $target (the leader's, read when the check began:
# quorum_queues_lagging), or with the leader's commit index now when $target is null: running (leader or
# follower), a voter where the column exists (3.13+ adds a member as a non-voter and promotes it once its
# initial sync is done; 3.10 has no such column), and whose log reaches that index. A fixed target is
# monotonic: under steady publishing a follower a few entries behind the moving commit index still passes
# once it wrote the target. Columns: 3.10 "Log Index"; 3.13/4.x "Last Written" (and "Last Log Index").
# Nothing without a leader. leader_commit: the leader's commit index, or null.
# shellcheck disable=SC2016 # jq's variables, not the shell's
CAUGHT_UP='def leader_commit: map(select(.["Raft State"] == "leader")) | first | .["Commit Index"];
def caught_up($target):
    leader_commit as $now
    | (if $target == null then $now else $target end) as $commit
    | .[]
    | select($now != null
             and (.["Raft State"] == "leader" or .["Raft State"] == "follower")
             and (.Membership // "voter") == "voter"
             and ((.["Last Written"] // .["Log Index"] // .["Last Log Index"] // -1) >= $commit))
    | .["Node Name"];'

# stdin: quorum_status rows of one queue; $1: the commit index to reach, or "" for the leader's now.
# stdout: its members that caught up (CAUGHT_UP), one a line.
caught_up_members() {
    jq -r --arg target "${1:-}" "$CAUGHT_UP"' caught_up(if $target == "" then null else ($target | tonumber) end)'
}

# stdin: quorum_status rows of one queue. stdout: its leader's commit index, or nothing.
leader_commit_index() { jq -r "$CAUGHT_UP"' leader_commit // empty'; }

# stdin: queue_snapshot; $1: the node whose quorum queues are checked; $2: "leaving" if $1 leaves. stdout:
# one JSON object a line, the quorum queues with a member on $1 and how many caught-up members each needs,
# not counting a leaving $1. Only those: the members this boot grew, or the ones that stay once $1 left.
# At boot: every such queue of 3 or more members keeps its quorum if any one node goes (a majority plus one
# caught up). Leaving: every other member caught up, the one grown onto a spare node included, so the queue
# keeps its size and its quorum plus one once $1 is gone.
quorum_queues_to_check() {
    jq -c --arg node "$1" --arg mode "${2:-boot}" '
        select(.type == "quorum" and (.members | index($node)))
        | (.members | length) as $size
        | if $mode == "boot" then select($size >= 3) | {vhost, name, needed: (($size / 2 | floor) + 2)}
          else {vhost, name, needed: ($size - 1)} end'
}

# The Raft state of every quorum queue with a member on the node it runs on, one line each: "status:" and,
# base64-encoded (a name may hold any character), {"vhost", "name", "status"}, where "status" holds the
# rows `rabbitmq-queues quorum_status --formatter json` prints (the same rabbit_quorum_queue:status/2;
# a value that is no atom, number or binary, such as {error,nodedown} for a member on a node that is down,
# as text). Up to 32 queues are read at once, each in its own process killed after 15 s: a queue whose
# reading fails or takes longer (a member's host unreachable) is left out, counts as not caught up, and
# holds up neither the other queues nor the pass.
QUORUM_STATUSES_ERL='
Text = fun(V) when is_atom(V) -> atom_to_binary(V, utf8);
          (V) when is_binary(V); is_number(V) -> V;
          (V) -> iolist_to_binary(io_lib:format("~0p", [V]))
       end,
Print = fun(Q) ->
    timer:kill_after(15000),
    try
        {resource, VHost, queue, Name} = amqqueue:get_name(Q),
        Rows = [maps:from_list([{K, Text(V)} || {K, V} <- Row]) || Row <- rabbit_quorum_queue:status(VHost, Name)],
        Json = rabbit_json:encode(#{vhost => VHost, name => Name, status => Rows}),
        io:format("status:~s~n", [base64:encode(Json)])
    catch _:_ -> ok
    end
end,
Down = list_to_atom("DOWN"),
Await = fun(Self, Running) ->
    receive {D, _, process, _, _} when D =:= Down -> Self(Self, Running - 1) after 0 -> Running end
end,
AwaitOne = fun(Running) -> receive {D, _, process, _, _} when D =:= Down -> Running - 1 end end,
Start = fun(_, [], 0) -> ok;
           (Self, [], Running) -> Self(Self, [], AwaitOne(Running));
           (Self, Queues, Running) when Running >= 32 -> Self(Self, Queues, AwaitOne(Running));
           (Self, [Q | Rest], Running) ->
               spawn_monitor(fun() -> Print(Q) end),
               Self(Self, Rest, Await(Await, Running + 1))
        end,
Start(Start, rabbit_amqqueue:list_local_quorum_queues(), 0).'

# $1: a node. stdout: one JSON object a line, {"vhost", "name", "status"} of each quorum queue with a member
# on $1 (QUORUM_STATUSES_ERL). One CLI call for all of them: `quorum_status` takes one per queue, about
# 1 s each, which is ten minutes a pass for a node with 600 quorum queues. A failed call is logged; the
# queues it read still count, and a line that does not decode is dropped (its queue counts as lagging).
quorum_statuses() {
    local out code=0
    out=$(ctl "$1" eval "$QUORUM_STATUSES_ERL" </dev/null 2>&1) || code=$?
    if ((code != 0)); then
        log "reading the Raft state of $1's quorum queues failed (exit $code): $(grep -v '^status:' <<<"$out" | head -1)"
    fi
    sed -n 's/^status://p' <<<"$out" | jq -c -R '(@base64d | fromjson)? // empty'
}

# stdin: queue_snapshot; $1: the node asked and checked; $2: "leaving" if it leaves; $3: a file of the
# commit index each queue must reach ("vhost/name<TAB>index" lines, written at a queue's first reading and
# kept by the caller across passes; nothing: the leader's commit index now). stdout: vhost/name of every
# quorum queue (quorum_queues_to_check) with fewer caught-up members (CAUGHT_UP) than it needs, a leaving
# $1 not counted. One CLI call (quorum_statuses) and one jq program a pass, however many queues; should
# that program fail, every queue checked counts as lagging.
quorum_queues_lagging() {
    local via=$1 mode=${2:-boot} targets=${3:-} checks statuses known=/dev/null fixed=false out exclude=/
    [[ $mode != leaving ]] || exclude=$via
    checks=$(quorum_queues_to_check "$via" "$mode")
    [[ -n $checks ]] || return 0
    statuses=$(quorum_statuses "$via")
    if [[ -n $targets ]]; then
        known=$targets
        fixed=true
    fi
    if ! out=$(jq -n -r --arg exclude "$exclude" --argjson fixed "$fixed" --rawfile known "$known" \
        --slurpfile checks <(printf '%s\n' "$checks") --slurpfile statuses <(printf '%s\n' "$statuses") \
        "$CAUGHT_UP"'
        ($statuses | map({key: ([.vhost, .name] | tojson), value: .status}) | from_entries) as $read
        | ($known | split("\n") | map(select(length > 0) | split("\t") | {key: .[0], value: (.[1] | tonumber)})
           | from_entries) as $targets
        | $checks[]
        | "\(.vhost)/\(.name)" as $key
        | ($read[[.vhost, .name] | tojson] // []) as $status
        | (if $fixed then ($targets[$key] // ($status | leader_commit)) else null end) as $target
        | (if $fixed and $targets[$key] == null and $target != null then "target\t\($key)\t\($target)"
           else empty end),
          (if ([$status | caught_up($target) | select(. != $exclude)] | length) < .needed then "lagging\t\($key)"
           else empty end)'); then
        jq -r '"\(.vhost)/\(.name)"' <<<"$checks"
        return 0
    fi
    [[ $fixed == false ]] || sed -n 's/^target\t//p' <<<"$out" >>"$targets"
    sed -n 's/^lagging\t//p' <<<"$out"
}

# stdin: queue_snapshot; $1: running nodes as a JSON array. stdout: the one holding the fewest quorum members.
node_with_fewest_members() {
    jq -s -r --argjson running "$1" '
        [.[] | select(.type == "quorum") | .members[]] as $held
        | $running | map(. as $node | {node: $node, held: ($held | map(select(. == $node)) | length)})
        | sort_by(.held) | first | .node // empty'
}

# Waits (up to SYNC_TIMEOUT seconds) until no queue is at risk, growing quorum queues that lost a member
# onto the running node with the fewest members (the new node, when it joined before the old one left),
# and then until the members of every quorum queue with a member on $1 caught up (quorum_queues_lagging,
# each queue's target read once): the condition for taking the next node, and for a new node to signal
# success.
await_replicas() {
    local via=$1 deadline=$((SECONDS + ${SYNC_TIMEOUT:-1800})) running snapshot at_risk target targets
    targets=$(mktemp)
    while :; do
        running=$(ctl "$via" cluster_status --formatter json | jq -c '.running_nodes // []')
        snapshot=$(queue_snapshot "$via")
        at_risk=$(queues_at_risk "$(jq length <<<"$running")" <<<"$snapshot")
        if [[ -z $at_risk ]]; then
            at_risk=$(quorum_queues_lagging "$via" boot "$targets" <<<"$snapshot")
            if [[ -z $at_risk ]]; then
                rm -f "$targets"
                log "every queue keeps its quorum (of caught-up members) and a synchronised copy if any one node goes"
                return 0
            fi
        fi
        if ((SECONDS >= deadline)); then
            rm -f "$targets"
            log "queues still at risk: $(head -5 <<<"$at_risk" | tr '\n' ' ')"
            return 1
        fi
        target=$(node_with_fewest_members "$running" <<<"$snapshot")
        if [[ -n $target ]]; then
            queues_ctl "$via" grow "$target" even --vhost-pattern '.*' --queue-pattern '.*' >/dev/null
        fi
        sleep "${POLL_SECONDS:-5}"
    done
}

# The boot's cluster steps for node $1, after the broker started.
become_member() {
    local me=$1
    join_cluster "$me"
    forget_departed_members "$me"
    await_replicas "$me"
}

# stdin: queue_snapshot; $1: the leaving node; $2: `cluster_status --formatter json`; $3: "voter" where a new
# member is a voter from the start (before 3.13). stdout: for each quorum queue with a member on $1 whose
# members all run, "vhost NUL name NUL node NUL" of the spare node to grow it onto: a running node, not in
# maintenance, that holds none of its members, the one with the fewest members first (counting those
# assigned here). A new voter must be acknowledged by the grown majority before it caught up, so a voter
# is added only where the running members alone make that majority. Nothing for a queue without a spare.
spare_members_to_add() {
    jq -s -j --arg leaving "$1" --argjson status "$2" --arg added "${3:-}" '
        ($status.running_nodes // []) as $running
        | ($status.maintenance_status // {}) as $maintenance
        | [$running[] | select(. != $leaving and ($maintenance[.] // "not under maintenance") == "not under maintenance")]
            as $candidates
        | (reduce (.[] | select(.type == "quorum") | .members[]) as $n ({}; .[$n] += 1)) as $held
        | reduce (.[] | select(.type == "quorum" and (.members | index($leaving))
                               and (.online | length) == (.members | length)
                               and ($added != "voter" or (.online | length) > ((.members | length) + 1) / 2)))
                  as $q
            ({held: $held, out: []};
             .held as $now
             | ([$candidates[] | select(. as $n | $q.members | index($n) | not)]
                | sort_by(. as $n | $now[$n] // 0) | first) as $spare
             | if $spare == null then .
               else .held[$spare] += 1 | .out += [$q.vhost, $q.name, $spare] end)
        | .out[] | ., "\u0000"'
}

# Grow before shrink: each quorum queue with a member on the leaving node $1 gains a member on a spare node
# (spare_members_to_add) before $1 goes, so it keeps its size; await_not_critical then waits until that
# member caught up. Without a spare node (terminate before launch) the queue keeps its other members only.
# Best effort, never a reason to skip the safety wait: a failed add (the queue deleted meanwhile, a
# membership change under way, a timeout) is logged and that queue keeps its members. Before 3.13 a new
# member votes at once, so nothing grows while RabbitMQ counts this node quorum-critical.
# GROW_TIMEOUT_SECONDS bounds each add (the CLI's default, 5 s, is shorter than a catch-up).
grow_onto_spare_nodes() {
    local me=$1 status added=voter vhost name node
    if ! status=$(ctl "$me" cluster_status --formatter json); then
        log "no cluster status from $me: its quorum queues are not grown"
        return 0
    fi
    if version_at_least 3.13; then
        added=non-voter
    elif ! upgrade_ctl "$me" await_online_quorum_plus_one -t 1 >/dev/null 2>&1; then
        log "$me is quorum-critical: no voter is added before it is not"
        return 0
    fi
    while IFS= read -r -d '' vhost && IFS= read -r -d '' name && IFS= read -r -d '' node; do
        log "growing $vhost/$name onto $node before $me leaves"
        queues_ctl "$me" add_member -p "$vhost" "$name" "$node" --timeout "${GROW_TIMEOUT_SECONDS:-300}" \
            </dev/null >/dev/null ||
            log "growing $vhost/$name onto $node failed: it keeps its members, the safety wait still guards it"
    done < <(queue_snapshot "$me" | spare_members_to_add "$me" "$status" "$added")
}

# Succeeds once node $1 may stop without costing a queue its quorum or its last synchronised mirror, and
# without leaving a quorum queue with a member that has not caught up (quorum_queues_lagging: RabbitMQ's
# await_online_quorum_plus_one counts online members, not caught-up ones). Each of RabbitMQ's checks waits
# LEAVE_WAIT_SECONDS; all are asked again until LEAVE_UNTIL (watch_lifecycle's deadline, in $SECONDS) or
# LEAVE_DEADLINE_SECONDS from now (default 24 h: under the hook's global timeout, 100 x its 15-minute
# heartbeat, while watch_lifecycle keeps heartbeating). Each quorum queue's catch-up target is its
# leader's commit index at its first reading here.
await_not_critical() {
    local me=$1 deadline=${LEAVE_UNTIL:-$((SECONDS + ${LEAVE_DEADLINE_SECONDS:-86400}))}
    local wait=${LEAVE_WAIT_SECONDS:-600} snapshot lagging targets
    targets=$(mktemp)
    while :; do
        lagging=$(upgrade_ctl "$me" await_online_quorum_plus_one -t "$wait" >/dev/null 2>&1 || echo "quorum-critical")
        if [[ -z $lagging ]] && ! version_at_least 4.0; then
            lagging=$(upgrade_ctl "$me" await_online_synchronized_mirror -t "$wait" >/dev/null 2>&1 || echo "sync-critical")
        fi
        if [[ -z $lagging ]] && snapshot=$(queue_snapshot "$me"); then
            lagging=$(jq -r "$MIRRORS_UNSYNCHRONISED"' select(mirrors_unsynchronised) | "\(.vhost)/\(.name)"' \
                <<<"$snapshot")
            [[ -n $lagging ]] || lagging=$(quorum_queues_lagging "$me" leaving "$targets" <<<"$snapshot")
        fi
        if [[ -z $lagging ]]; then
            rm -f "$targets"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            rm -f "$targets"
            log "$me is still quorum- or sync-critical ($(head -5 <<<"$lagging" | tr '\n' ' ')): it does not drain, shrink or leave"
            return 1
        fi
        log "$me is quorum- or sync-critical, or a member has not caught up ($(head -5 <<<"$lagging" | tr '\n' ' ')): waiting"
        sleep "${POLL_SECONDS:-5}"
    done
}

# The termination hook's steps for node $1: leave the cluster without ever costing a queue its quorum or
# its last synchronised copy, and, while a spare node runs, without shrinking a quorum queue below its size
# of caught-up members (grow before shrink). The last running node of a cluster does not leave (its data
# stays). Returns 2 when a safety step failed (nothing drained or shrunk: ask again later), 1 when a step
# after the drain failed. Every step returns on failure explicitly: called as a condition
# (watch_lifecycle), bash ignores set -e inside the function, and a failed safety check must never lead to
# the shrink and the forget.
leave_cluster() {
    local me=$1 status peer
    status=$(ctl "$me" cluster_status --formatter json) || return 2
    peer=$(jq -r --arg me "$me" '[.running_nodes[] | select(. != $me)] | first // empty' <<<"$status") ||
        return 2
    if [[ -z $peer ]]; then
        log "$me is the only running member: it keeps its data and does not leave"
        return 0
    fi
    log "$me leaves the cluster (peer $peer): growing its quorum queues onto spare nodes, then waiting until every member caught up and $me is not quorum- or sync-critical"
    grow_onto_spare_nodes "$me"
    await_not_critical "$me" || return 2
    upgrade_ctl "$me" drain || return 1
    queues_ctl "$me" shrink "$me" >/dev/null || return 1
    ctl "$me" stop_app || return 1
    ctl "$peer" forget_cluster_node "$me" || return 1
    log "$me left; $peer forgot it"
    await_replicas "$peer"
}

# --- the node's AWS side: its name, its group, the lifecycle hook ---------------------------------------

this_node() { printf 'rabbit@%s\n' "$(imds local-hostname)"; }

# The node names of every instance of this node's Auto Scaling group (itself included).
peer_nodes() {
    local group ids
    group=$(auto_scaling_group)
    ids=$(aws autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$group" \
        --query 'AutoScalingGroups[0].Instances[].InstanceId' --output text)
    [[ -n $ids && $ids != None ]] || return 1
    # shellcheck disable=SC2086 # one word per instance id
    aws ec2 describe-instances --instance-ids $ids \
        --query 'Reservations[].Instances[].PrivateDnsName' --output text |
        tr '\t' '\n' | sed '/^$/d; s/^/rabbit@/'
}

auto_scaling_group() {
    aws autoscaling describe-auto-scaling-instances --instance-ids "$(imds instance-id)" \
        --query 'AutoScalingInstances[0].AutoScalingGroupName' --output text
}

# $1: the lifecycle hook's name; $2: the action (complete-lifecycle-action, record-lifecycle-action-heartbeat).
lifecycle_action() {
    local hook=$1 action=$2
    shift 2
    aws autoscaling "$action" --auto-scaling-group-name "$(auto_scaling_group)" \
        --lifecycle-hook-name "$hook" --instance-id "$(imds instance-id)" "$@"
}

# Heartbeats hook $1 every minute in the background (its 15-minute heartbeat timeout never runs out while
# this node works); stdout: the heartbeat loop's pid, to kill when done.
start_heartbeats() {
    (while sleep 60; do lifecycle_action "$1" record-lifecycle-action-heartbeat 2>/dev/null || true; done) \
        >/dev/null &
    printf '%s\n' "$!"
}

# Completes this instance's launch action with $1 (CONTINUE or ABANDON) and stops its heartbeats. The
# instances the group launched when the stack was created have no launch action (the hook is created
# after the group): nothing to complete then.
complete_launch() {
    local attempt error
    [[ -n ${LAUNCH_HOOK_NAME:-} ]] || return 0
    [[ -z ${LAUNCH_HEARTBEATS:-} ]] || kill "$LAUNCH_HEARTBEATS" 2>/dev/null || true
    for attempt in 1 2 3 4 5; do
        if error=$(lifecycle_action "$LAUNCH_HOOK_NAME" complete-lifecycle-action \
            --lifecycle-action-result "$1" 2>&1 >/dev/null); then
            log "launch action completed: $1"
            return 0
        fi
        if [[ $error == *"No active Lifecycle Action"* ]]; then
            log "no launch action to complete (an instance of the stack's creation)"
            return 0
        fi
        log "completing the launch action with $1 failed ($attempt/5): $error"
        sleep 10
    done
    # Not fatal: the group abandons the action when its heartbeat times out, and the termination hook
    # then takes this node out of the cluster in order.
    log "the launch action stays open: the group abandons this instance in 15 minutes"
}

# Runs as the rabbitmq-lifecycle service: waits until the group moves this instance to Terminated (the
# termination lifecycle hook holds it in Terminating:Wait), leaves the cluster, completes the action. A
# leave that stopped at a safety step (leave_cluster returns 2: the node is still critical, or a check
# failed) is asked again, heartbeating, until LEAVE_DEADLINE_SECONDS (24 h). CONTINUE always terminates the
# instance: past that deadline a still-critical node is terminated undrained (alarm MembersNotRunning).
watch_lifecycle() {
    local me heartbeat left=0
    me=$(this_node)
    until [[ $(imds autoscaling/target-lifecycle-state 2>/dev/null || true) == Terminated ]]; do
        sleep 5
    done
    log "the Auto Scaling group terminates this instance: $me leaves the cluster"
    heartbeat=$(start_heartbeats "$LIFECYCLE_HOOK_NAME")
    LEAVE_UNTIL=$((SECONDS + ${LEAVE_DEADLINE_SECONDS:-86400}))
    while :; do
        left=0
        leave_cluster "$me" || left=$?
        ((left == 2 && SECONDS < LEAVE_UNTIL)) || break
        log "$me may not leave yet: asking again"
        sleep "${POLL_SECONDS:-5}"
    done
    if ((left != 0)); then
        log "leaving failed (MembersNotRunning alarms); the next node to boot forgets $me (forget_departed_members)"
    fi
    kill "$heartbeat" 2>/dev/null || true
    lifecycle_action "$LIFECYCLE_HOOK_NAME" complete-lifecycle-action --lifecycle-action-result CONTINUE
}

render_lifecycle_service() {
    cat <<'UNIT'
[Unit]
Description=Leave the RabbitMQ cluster when the Auto Scaling group terminates this instance
After=rabbitmq-server.service
Requires=rabbitmq-server.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/rabbitmq-node watch-lifecycle
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
}

# --- side effects -----------------------------------------------------------------------------------

imds() {
    local token
    token=$(curl -fsS -X PUT "$IMDS/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
    curl -fsS -H "X-aws-ec2-metadata-token: $token" "$IMDS/meta-data/$1"
}

secret_string() {
    aws secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text
}

prepare_data_volume() {
    local attempt device
    for attempt in $(seq 1 60); do
        [[ -e $DATA_DEVICE ]] && break
        log "waiting for the data volume $DATA_DEVICE ($attempt)"
        sleep 2
    done
    [[ -e $DATA_DEVICE ]] || die "the data volume $DATA_DEVICE did not appear"
    device=$(readlink -f "$DATA_DEVICE")
    if ! blkid "$device" >/dev/null 2>&1; then
        mkfs.xfs -q -L rabbitmq-data "$device"
    fi
    mkdir -p "$DATA_DIR"
    if ! grep -q '^LABEL=rabbitmq-data ' /etc/fstab; then
        # No nofail: the node's identity and the Erlang cookie live on this volume. If it is missing at a
        # reboot the instance must not come up as an empty broker on the root disk (rabbitmq-server also
        # RequiresMountsFor it); it fails its EC2 checks instead and is replaced.
        printf 'LABEL=rabbitmq-data %s xfs defaults,noatime 0 2\n' "$DATA_DIR" >>/etc/fstab
    fi
    mountpoint -q "$DATA_DIR" || mount "$DATA_DIR"
}

install_packages() {
    dnf -y -q install jq aws-cfn-bootstrap
    rpm --import "$SIGNING_KEYS/rabbitmq-release-signing-key.asc" \
        "$SIGNING_KEYS/cloudsmith.rabbitmq-erlang.E495BB49CC4BBE5B.key" \
        "$SIGNING_KEYS/cloudsmith.rabbitmq-server.9F4587F226208342.key"
    render_yum_repo >/etc/yum.repos.d/rabbitmq.repo
    dnf -y -q install socat logrotate "erlang-${ERLANG_VERSION}*" "rabbitmq-server-${RABBITMQ_VERSION}"
    # Pinned: a routine `dnf upgrade` must not change the broker or Erlang under a running cluster.
    printf 'exclude=erlang* rabbitmq-server*\n' >>/etc/dnf/dnf.conf
}

write_configuration() {
    local host
    host=$(imds local-hostname)
    install -d -m 0755 "$CONF_DIR"
    render_rabbitmq_conf >"$CONF_DIR/rabbitmq.conf"
    render_enabled_plugins >"$CONF_DIR/enabled_plugins"
    render_rabbitmq_env "$host" >"$CONF_DIR/rabbitmq-env.conf"
    chown root:rabbitmq "$CONF_DIR"/rabbitmq.conf "$CONF_DIR"/enabled_plugins "$CONF_DIR"/rabbitmq-env.conf
    chmod 0640 "$CONF_DIR"/rabbitmq.conf "$CONF_DIR"/enabled_plugins "$CONF_DIR"/rabbitmq-env.conf

    install -d -m 0755 /etc/systemd/system/rabbitmq-server.service.d
    printf '[Unit]\nRequiresMountsFor=%s\n[Service]\nLimitNOFILE=65536\nTimeoutStartSec=900\n' "$DATA_DIR" \
        >/etc/systemd/system/rabbitmq-server.service.d/limits.conf
}

install_cookie() {
    local cookie=$DATA_DIR/.erlang.cookie
    chown rabbitmq:rabbitmq "$DATA_DIR"
    (
        umask 077
        secret_string "$COOKIE_SECRET_ARN" | tr -d '\n' >"$cookie"
    )
    [[ -s $cookie ]] || die "the Erlang cookie secret is empty"
    chown rabbitmq:rabbitmq "$cookie"
    chmod 0400 "$cookie"
}

start_rabbitmq() {
    systemctl daemon-reload
    systemctl enable rabbitmq-server
    systemctl start rabbitmq-server
    ctl "$(this_node)" await_startup --timeout 900
}

# Creates or updates user $2 from the JSON secret $1 ({username, password}); the password goes through
# stdin, never through a command line.
ensure_user() {
    local me=$1 secret=$2 user
    user=$(printf '%s' "$secret" | jq -r .username)
    [[ -n $user && $user != null && $user != guest ]] || die "a credentials secret has no usable username"
    if ctl "$me" list_users --formatter json | jq -e --arg u "$user" 'any(.[]; .user == $u)' >/dev/null; then
        printf '%s' "$secret" | jq -j .password | ctl "$me" change_password "$user"
    elif ! printf '%s' "$secret" | jq -j .password | ctl "$me" add_user "$user"; then
        # Another node of a cluster booting in parallel created it first.
        printf '%s' "$secret" | jq -j .password | ctl "$me" change_password "$user"
    fi
    printf '%s\n' "$user"
}

ensure_admin_user() {
    local me=$1 user
    user=$(ensure_user "$me" "$(secret_string "$ADMIN_SECRET_ARN")")
    ctl "$me" set_user_tags "$user" administrator
    ctl "$me" set_permissions -p / "$user" '.*' '.*' '.*'
    if ctl "$me" list_users --formatter json | jq -e 'any(.[]; .user == "guest")' >/dev/null; then
        ctl "$me" delete_user guest || true
    fi
}

# The queue balancer's own user: it reads every queue and node (monitoring), writes its temporary move
# policies (policymaker) and declares queues passively, on every vhost; it cannot publish, consume, delete
# or manage users (tests/infra/test_node_bootstrap.py checks this on a real node).
ensure_balancer_user() {
    local me=$1 user
    [[ -n ${BALANCER_SECRET_ARN:-} ]] || return 0
    user=$(ensure_user "$me" "$(secret_string "$BALANCER_SECRET_ARN")")
    ctl "$me" set_user_tags "$user" monitoring policymaker
    printf '%s\n' "$user" >"$BALANCER_USER_FILE"
    grant_balancer_vhosts "$me"
}

# Empty permission patterns on every vhost that lacks them; the metrics timer runs this each minute, so
# vhosts created later are covered.
grant_balancer_vhosts() {
    local me=$1 user granted all vhost
    [[ -s $BALANCER_USER_FILE ]] || return 0
    user=$(<"$BALANCER_USER_FILE")
    granted=$(ctl "$me" list_user_permissions "$user" --formatter json)
    all=$(ctl "$me" list_vhosts name --formatter json | jq -c 'map(.name)')
    # A user without any permission may be listed as nothing at all rather than [].
    for vhost in $(jq -r --argjson all "$all" '$all - map(.vhost) | .[]' <<<"${granted:-[]}"); do
        log "granting $user its (empty) permissions on vhost $vhost"
        ctl "$me" set_permissions -p "$vhost" "$user" '^$' '^$' '^$'
    done
}

apply_default_policy() {
    local me=$1
    case $QUEUE_TYPE in
        classic)
            # The seed's mirroring policy; an existing ha-all (perhaps tuned by an operator) is kept.
            version_at_least 4.0 && die "queueType classic needs RabbitMQ 3.x: 4.x removed classic mirroring"
            if ! ctl "$me" list_policies -p / --formatter json |
                jq -e 'any(.[]; .name == "ha-all")' >/dev/null; then
                ctl "$me" set_policy -p / --apply-to queues --priority 0 \
                    ha-all '.*' '{"ha-mode":"all","ha-sync-mode":"automatic"}'
            fi
            ;;
        quorum)
            ctl "$me" update_vhost_metadata / --default-queue-type quorum
            ;;
        *) die "QUEUE_TYPE must be classic or quorum, not '$QUEUE_TYPE'" ;;
    esac
}

install_services() {
    render_metrics_service >/etc/systemd/system/rabbitmq-metrics.service
    render_metrics_timer >/etc/systemd/system/rabbitmq-metrics.timer
    render_lifecycle_service >/etc/systemd/system/rabbitmq-lifecycle.service
    systemctl daemon-reload
    systemctl enable --now rabbitmq-metrics.timer rabbitmq-lifecycle.service
}

# Ships the broker's and this script's logs to CloudWatch Logs (the log group the stack made).
install_log_shipping() {
    [[ -n ${LOG_GROUP_NAME:-} ]] || return 0
    dnf -y -q install amazon-cloudwatch-agent
    render_cloudwatch_agent_config >/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json
    /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s \
        -c file:/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json
}

render_cloudwatch_agent_config() {
    jq -n --arg group "$LOG_GROUP_NAME" '{logs: {logs_collected: {files: {collect_list: [
        {file_path: "/var/log/rabbitmq/*.log", log_group_name: $group,
         log_stream_name: "{instance_id}/rabbitmq", timestamp_format: "%Y-%m-%d %H:%M:%S"},
        {file_path: "/var/log/rabbitmq-node.log", log_group_name: $group,
         log_stream_name: "{instance_id}/rabbitmq-node"},
        {file_path: "/var/log/cloud-init-output.log", log_group_name: $group,
         log_stream_name: "{instance_id}/cloud-init"}
    ]}}}}'
}

publish_metrics() {
    local data me
    me=$(this_node)
    data=$(rabbitmq-diagnostics -q -n "$me" status --formatter json | render_metric_data)
    aws cloudwatch put-metric-data --namespace "$METRICS_NAMESPACE" --metric-data "$data"
    data=$(ctl "$me" cluster_status --formatter json | render_cluster_metric_data)
    aws cloudwatch put-metric-data --namespace "$METRICS_NAMESPACE" --metric-data "$data"
    grant_balancer_vhosts "$me"
}

signal_cloudformation() {
    [[ -n ${CFN_STACK_NAME:-} && -n ${CFN_RESOURCE_ID:-} && -x /opt/aws/bin/cfn-signal ]] || return 0
    /opt/aws/bin/cfn-signal --exit-code "$1" --stack "$CFN_STACK_NAME" --resource "$CFN_RESOURCE_ID" \
        --region "$AWS_REGION" || log "cfn-signal failed"
}

# A boot that failed after joining: the node leaves the cluster again before it stops, so neither it nor
# the quorum members grown onto it stay behind as dead votes (pause_minority) until the next node's
# forget_departed_members. A peer removes its members and forgets it. Best effort: each step is logged.
leave_after_failed_boot() {
    local me=$1 peer
    peer=$(ctl "$me" cluster_status --formatter json --timeout 60 2>/dev/null |
        jq -r --arg me "$me" '[(.running_nodes // [])[] | select(. != $me)] | first // empty') || peer=""
    [[ -n $peer ]] || return 0
    log "$me joined the cluster of $peer before the boot failed: it leaves it again"
    queues_ctl "$peer" shrink "$me" >/dev/null || log "removing the quorum members of $me failed"
    ctl "$me" stop_app || log "stopping $me failed"
    ctl "$peer" forget_cluster_node "$me" || log "$peer could not forget $me (alarm MembersNotRunning)"
}

on_error() {
    local status=$?
    log "bootstrap failed (exit $status) at line $1"
    [[ -z ${ME:-} ]] || leave_after_failed_boot "$ME" || true
    # A node that is not a member of the cluster must not take client traffic behind the load balancer.
    systemctl stop rabbitmq-server || true
    signal_cloudformation 1
    # The group terminates this instance and launches another; the old node it would replace stays.
    complete_launch ABANDON
    exit "$status"
}

bootstrap() {
    local me
    trap 'on_error $LINENO' ERR
    exec > >(tee -a /var/log/rabbitmq-node.log) 2>&1
    log "bootstrapping RabbitMQ $RABBITMQ_VERSION (Erlang $ERLANG_VERSION) for cluster $CLUSTER_NAME"
    # The launch hook holds this instance in Pending:Wait (out of service) until complete_launch.
    [[ -z ${LAUNCH_HOOK_NAME:-} ]] || LAUNCH_HEARTBEATS=$(start_heartbeats "$LAUNCH_HOOK_NAME")
    systemctl enable --now amazon-ssm-agent || log "amazon-ssm-agent is not installed"
    prepare_data_volume
    install_packages
    install_log_shipping
    write_configuration
    install_cookie
    start_rabbitmq
    me=$(this_node)
    ME=$me # for on_error: from here on a failure leaves the cluster again
    # Success is signalled only once this node is a member of the cluster and any one node may go again
    # (every queue's members caught up): the rolling update, and through the launch hook AZRebalance, an
    # instance refresh or a replacement of an unhealthy node, take the next node only then.
    become_member "$me"
    ensure_admin_user "$me"
    ensure_balancer_user "$me"
    apply_default_policy "$me"
    install_services
    log "node $me is up, a member of the cluster, and every queue's members caught up"
    complete_launch CONTINUE
    signal_cloudformation 0
}

main() {
    case ${1:-bootstrap} in
        bootstrap)
            load_settings
            bootstrap
            ;;
        metrics)
            load_settings
            publish_metrics
            ;;
        watch-lifecycle)
            load_settings
            watch_lifecycle
            ;;
        *) die "usage: ${0##*/} [bootstrap|metrics|watch-lifecycle]" ;;
    esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
