#!/usr/bin/env bash
# Run the MLflow tracking server with MLflow's basic-auth app (users, passwords,
# per-experiment permissions). The same script serves a laptop, a VM head node and
# the Kubernetes Deployment in cluster/k8s/mlflow.yaml; only the environment differs.
#
# Listens on 127.0.0.1 unless MLFLOW_HOST says otherwise: reach it through an SSH
# tunnel or `kubectl port-forward`, never through a public port.
#
# Required (the server refuses to start without them):
#   MLFLOW_AUTH_ADMIN_PASSWORD      password of the admin user, created on first start
#   MLFLOW_FLASK_SERVER_SECRET_KEY  static key for CSRF protection (same on every replica)
# Optional:
#   MLFLOW_AUTH_ADMIN_USERNAME      admin user name                      (default admin)
#   MLFLOW_HOST, MLFLOW_PORT        bind address and port                (default 127.0.0.1, 5000)
#   MLFLOW_DATA_DIR                 where the sqlite files live          (default ./mlflow-server)
#   MLFLOW_BACKEND_STORE_URI        runs, params, metrics                (default sqlite in MLFLOW_DATA_DIR;
#                                   a postgresql:// URI needs psycopg2 in the image)
#   MLFLOW_AUTH_DATABASE_URI        users and permissions                (default sqlite in MLFLOW_DATA_DIR)
#   MLFLOW_ARTIFACTS_DESTINATION    artifact store the server proxies to (default MLFLOW_DATA_DIR/artifacts;
#                                   s3://bucket/prefix on a cluster, credentials from the AWS chain)
#   MLFLOW_AUTH_DEFAULT_PERMISSION  what users get on experiments they did not create
#                                   (READ | EDIT | MANAGE | NO_PERMISSIONS; default READ)
#   MLFLOW_WORKERS                  server worker processes              (default 2)
#   MLFLOW_SERVER_ALLOWED_HOSTS     accepted Host headers (default: localhost and private IPs);
#                                   add the in-cluster DNS name when other pods call the server
set -euo pipefail

die() { echo "mlflow_server: $*" >&2; exit 1; }

[[ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]] \
    || die "set MLFLOW_AUTH_ADMIN_PASSWORD (the admin user's password; in Kubernetes it comes from the mlflow-auth Secret)"
[[ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]] \
    || die "set MLFLOW_FLASK_SERVER_SECRET_KEY (e.g. \$(openssl rand -hex 32)); basic-auth needs a static key for CSRF protection"

PERMISSION="${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}"
case "$PERMISSION" in
    READ|EDIT|MANAGE|NO_PERMISSIONS) ;;
    *) die "MLFLOW_AUTH_DEFAULT_PERMISSION=$PERMISSION: choose READ, EDIT, MANAGE or NO_PERMISSIONS" ;;
esac

MLFLOW_BIN="$(command -v mlflow || true)"
if [[ -z "$MLFLOW_BIN" ]]; then
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    MLFLOW_BIN="$repo/.venv/bin/mlflow"
fi
[[ -x "$MLFLOW_BIN" ]] || die "no 'mlflow' executable on PATH; install the project first"

# The data dir holds the password hashes (auth db) and, by default, runs and artifacts.
umask 077
DATA_DIR="${MLFLOW_DATA_DIR:-$PWD/mlflow-server}"
mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"

export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
export MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export MLFLOW_WORKERS="${MLFLOW_WORKERS:-2}"
export MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$DATA_DIR/mlflow.db}"
export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-$DATA_DIR/artifacts}"
AUTH_DB_URI="${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$DATA_DIR/basic_auth.db}"

# The basic-auth app reads its settings from an ini file; the admin credentials stay in
# the environment (MLFLOW_AUTH_ADMIN_*), which takes precedence over the file.
AUTH_CONFIG="$DATA_DIR/basic_auth.ini"
cat >"$AUTH_CONFIG" <<EOF
[mlflow]
default_permission = $PERMISSION
database_uri = $AUTH_DB_URI
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
export MLFLOW_AUTH_CONFIG_PATH="$AUTH_CONFIG"

echo "mlflow_server: basic-auth on http://$MLFLOW_HOST:$MLFLOW_PORT (store $MLFLOW_BACKEND_STORE_URI, artifacts $MLFLOW_ARTIFACTS_DESTINATION)"
exec "$MLFLOW_BIN" server --app-name basic-auth \
    --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
