# fairgate gateway image; compose.yaml runs a fleet of it (README: "Docker").
# The config is read from /etc/fairgate/gateway.yaml (the shipped one unless you mount yours);
# secrets and per-deployment values come from the environment (.env.example lists them).
FROM python:3.11-slim

RUN useradd --system --uid 10001 --no-create-home fairgate \
 && mkdir -p /var/lib/fairgate /etc/fairgate \
 && chown fairgate /var/lib/fairgate
WORKDIR /opt/fairgate
COPY constraints.txt pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
# Pinned by constraints.txt (`make constraints` regenerates it), so a rebuild installs the same versions.
RUN pip install --no-cache-dir --constraint constraints.txt . && rm -rf /root/.cache
COPY config/gateway.yaml /etc/fairgate/gateway.yaml

USER fairgate
# The data dir: relative paths in the config land here, the audit file (var/audit.jsonl) first.
WORKDIR /var/lib/fairgate
VOLUME /var/lib/fairgate
# 8080 the proxy, 8081 the admin listener (health, readiness, metrics; /admin/* only with
# FAIRGATE_ADMIN_TOKEN set): probes and Prometheus need to reach it, so publish it to them only.
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/readyz', timeout=2)"]
ENTRYPOINT ["fairgate"]
CMD ["run", "-c", "/etc/fairgate/gateway.yaml", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:8081"]
