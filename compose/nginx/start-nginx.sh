#!/bin/sh
# Start nginx in the foreground with the listen address from $NGINX_LISTEN ("80" or "127.0.0.1:18080").
# Until fleetdeck has rendered an upstream into the shared volume, a seed upstream keeps the config valid:
# upstream.seed.conf from $NGINX_SEED_UPSTREAM (default: the Compose service name `web`, resolved by Docker's DNS).
set -eu
conf_dir=/etc/fleetdeck-nginx
shared=/etc/nginx/fleetdeck
mkdir -p "$shared" /var/log/fleetdeck-nginx
if [ ! -s "$shared/upstream.conf" ]; then
    cp "$conf_dir/${NGINX_SEED_UPSTREAM:-upstream.seed.conf}" "$shared/upstream.conf"
fi
sed "s/__LISTEN__/${NGINX_LISTEN:-80}/" "$conf_dir/nginx.conf.in" >/etc/nginx/nginx.conf
nginx -t
exec nginx -g 'daemon off;'
