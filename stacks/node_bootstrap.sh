#!/bin/bash
# User data of one RabbitMQ node of the ClusterStack (Amazon Linux 2023).
#
# The stack installs this file as /usr/local/sbin/rabbitmq-node, writes the node's settings to
# /etc/rabbitmq-node.env and runs `rabbitmq-node bootstrap` once, at first boot. A systemd timer then
# runs `rabbitmq-node metrics` every minute. No secret passes through user data: the node reads the
# Erlang cookie and the admin credentials from Secrets Manager with its instance role.
#
# Sourcing this file only defines functions: the infra tests source it and call the render_*
# functions to check what a node would write, e.g. by starting a real node with the rendered conf.
set -Eeuo pipefail

readonly SETTINGS_FILE=${RABBITMQ_NODE_SETTINGS:-/etc/rabbitmq-node.env}
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
    QUEUE_TYPE=${QUEUE_TYPE:-classic}
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
## A replaced instance leaves a stale member behind: log it, an operator runs forget_cluster_node.
cluster_formation.node_cleanup.only_log_warning = true

## Three nodes in three availability zones: the minority side of a partition pauses.
cluster_partition_handling = pause_minority

listeners.tcp.default = 5672
management.tcp.port = 15672
loopback_users.guest = true

vm_memory_high_watermark.relative = 0.4
disk_free_limit.relative = 1.0
EOF
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
        printf 'LABEL=rabbitmq-data %s xfs defaults,noatime,nofail 0 2\n' "$DATA_DIR" >>/etc/fstab
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
    printf '[Service]\nLimitNOFILE=65536\nTimeoutStartSec=900\n' \
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
    rabbitmqctl -q await_startup --timeout 900
}

ensure_admin_user() {
    local secret user
    secret=$(secret_string "$ADMIN_SECRET_ARN")
    user=$(printf '%s' "$secret" | jq -r .username)
    [[ -n $user && $user != null && $user != guest ]] || die "the admin secret has no usable username"
    # The password goes through stdin, never through a command line.
    if rabbitmqctl -q list_users --formatter json | jq -e --arg u "$user" 'any(.[]; .user == $u)' >/dev/null; then
        printf '%s' "$secret" | jq -j .password | rabbitmqctl -q change_password "$user"
    elif ! printf '%s' "$secret" | jq -j .password | rabbitmqctl -q add_user "$user"; then
        # Another node of a cluster booting in parallel created it first.
        printf '%s' "$secret" | jq -j .password | rabbitmqctl -q change_password "$user"
    fi
    rabbitmqctl -q set_user_tags "$user" administrator
    rabbitmqctl -q set_permissions -p / "$user" '.*' '.*' '.*'
    if rabbitmqctl -q list_users --formatter json | jq -e 'any(.[]; .user == "guest")' >/dev/null; then
        rabbitmqctl -q delete_user guest || true
    fi
}

apply_default_policy() {
    case $QUEUE_TYPE in
        classic)
            # The seed's mirroring policy; an existing ha-all (perhaps tuned by an operator) is kept.
            if ! rabbitmqctl -q list_policies -p / --formatter json |
                jq -e 'any(.[]; .name == "ha-all")' >/dev/null; then
                rabbitmqctl -q set_policy -p / --apply-to queues --priority 0 \
                    ha-all '.*' '{"ha-mode":"all","ha-sync-mode":"automatic"}'
            fi
            ;;
        quorum)
            rabbitmqctl -q update_vhost_metadata / --default-queue-type quorum
            ;;
        *) die "QUEUE_TYPE must be classic or quorum, not '$QUEUE_TYPE'" ;;
    esac
}

install_metrics_timer() {
    render_metrics_service >/etc/systemd/system/rabbitmq-metrics.service
    render_metrics_timer >/etc/systemd/system/rabbitmq-metrics.timer
    systemctl daemon-reload
    systemctl enable --now rabbitmq-metrics.timer
}

publish_metrics() {
    local data
    data=$(rabbitmq-diagnostics -q status --formatter json | render_metric_data)
    aws cloudwatch put-metric-data --namespace "$METRICS_NAMESPACE" --metric-data "$data"
}

signal_cloudformation() {
    [[ -n ${CFN_STACK_NAME:-} && -n ${CFN_RESOURCE_ID:-} && -x /opt/aws/bin/cfn-signal ]] || return 0
    /opt/aws/bin/cfn-signal --exit-code "$1" --stack "$CFN_STACK_NAME" --resource "$CFN_RESOURCE_ID" \
        --region "$AWS_REGION" || log "cfn-signal failed"
}

on_error() {
    local status=$?
    log "bootstrap failed (exit $status) at line $1"
    signal_cloudformation 1
    exit "$status"
}

bootstrap() {
    trap 'on_error $LINENO' ERR
    log "bootstrapping RabbitMQ $RABBITMQ_VERSION (Erlang $ERLANG_VERSION) for cluster $CLUSTER_NAME"
    systemctl enable --now amazon-ssm-agent || log "amazon-ssm-agent is not installed"
    prepare_data_volume
    install_packages
    write_configuration
    install_cookie
    start_rabbitmq
    ensure_admin_user
    apply_default_policy
    install_metrics_timer
    log "node $(imds local-hostname) is up"
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
        *) die "usage: ${0##*/} [bootstrap|metrics]" ;;
    esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
