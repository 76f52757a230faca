# fairgate gateway image. Mount the config at /etc/fairgate/gateway.yaml.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --no-create-home fairgate
WORKDIR /opt/fairgate
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER fairgate
EXPOSE 8080 8081
# In a container the admin listener must be reachable by probes; /admin/* stays disabled
# unless FAIRGATE_ADMIN_TOKEN is set.
ENTRYPOINT ["fairgate"]
CMD ["run", "-c", "/etc/fairgate/gateway.yaml", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:8081"]
