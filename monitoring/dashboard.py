#!/usr/bin/env python3
"""The Grafana dashboard of ngx-memory-status, written as monitoring/dashboard.json.

Run it after a change (python3 monitoring/dashboard.py > monitoring/dashboard.json);
t/25-monitoring.t checks the committed JSON is what it writes, and runs every
panel's query against a real Prometheus scraping a real nginx.
"""
import json
DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
pid = [0]
def panel(title, kind, targets, x, y, w, h, unit="bytes", stack=False, desc="", extra=None):
    pid[0] += 1
    p = {
        "id": pid[0], "title": title, "type": kind, "datasource": DS,
        "description": desc,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [dict({"datasource": DS, "refId": chr(65 + i)}, **t) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line", "fillOpacity": 60 if stack else 10, "lineWidth": 1,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        }
        p["options"] = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    if extra:
        extra(p)
    panels.append(p)
    return p
I = 'instance=~"$instance"'
def row(title, y):
    pid[0] += 1
    panels.append({"id": pid[0], "type": "row", "title": title, "collapsed": False,
                   "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})

def limit_line(p):
    # The container's limit drawn as a dashed line over the stack, not stacked.
    p["fieldConfig"]["overrides"].append({
        "matcher": {"id": "byName", "options": "cgroup limit"},
        "properties": [
            {"id": "custom.stacking", "value": {"mode": "none", "group": "limit"}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
        ]})

row("The server", 0)
panel("Server resident memory by owner, every page counted once", "timeseries", [
    {"expr": f'instance_owner:nginx_memory_server_resident_bytes:max{{{I}}}', "legendFormat": "{{owner}}"},
    {"expr": f'max(nginx_memory_container_limit_bytes{{{I}}})', "legendFormat": "cgroup limit"},
], 0, 1, 16, 9, stack=True, extra=limit_line,
    desc="Workers, master, cache processes and old generations, shared pages counted once (PSS), split by owner; the dashed line is the tightest memory cgroup limit.")
panel("Processes", "stat", [
    {"expr": f'max(nginx_memory_server_workers{{{I}}})', "legendFormat": "workers", "instant": True},
    {"expr": f'max(nginx_memory_server_old_generation_workers{{{I}}})', "legendFormat": "old generation workers", "instant": True},
    {"expr": f'max(nginx_memory_server_generation{{{I}}})', "legendFormat": "generation", "instant": True},
], 16, 1, 8, 4, unit="none")
panel("Old generations", "timeseries", [
    {"expr": f'max(nginx_memory_server_old_generation_resident_bytes{{{I}}})', "legendFormat": "old generation resident"},
    {"expr": f'max(nginx_memory_server_process_swap_bytes{{{I}}})', "legendFormat": "largest swap of a process"},
], 16, 5, 8, 5, desc="Workers of an older configuration still alive after a reload, each counted whole; and swap.")
panel("Each worker's owners (resident)", "timeseries", [
    {"expr": f'nginx_memory_server_worker_owner_resident_bytes{{{I}}}', "legendFormat": "worker {{worker}} gen {{generation}} {{owner}}"},
], 0, 10, 24, 9, stack=True, desc="Each worker's published breakdown by owner (resident bytes).")
row("Shared memory zones", 19)
panel("Zone fill (slab pages used)", "timeseries", [
    {"expr": f'instance_zone:nginx_memory_zone_fill:ratio{{{I}}}', "legendFormat": "{{zone}}"},
], 0, 20, 12, 8, unit="percentunit")
panel("Zone allocation failures, per 10 minutes", "timeseries", [
    {"expr": f'increase(instance_zone:nginx_memory_slab_alloc_failures:max{{{I}}}[10m])', "legendFormat": "{{zone}}"},
], 12, 20, 12, 8, unit="none", desc="nginx's own count of slab allocations that found no room (ngx_slab_alloc() failed: no memory), over the last 10 minutes (a recorded series: a window of several rule evaluations).")
row("Lua and glibc", 28)
panel("Lua heaps per worker: live vs allocator held", "timeseries", [
    {"expr": f'instance_worker_vm:nginx_memory_lua_gc_bytes:max{{{I}}}', "legendFormat": "worker {{worker}} (pid {{pid}}) {{vm}} live (GC)"},
    {"expr": f'instance_worker_vm:nginx_memory_lua_allocator_mapped_bytes:max{{{I}}}', "legendFormat": "worker {{worker}} (pid {{pid}}) {{vm}} allocator mapped"},
], 0, 29, 12, 8, desc="Every worker's Lua VMs as it published them (each worker publishes every memory_status_interval).")
panel("glibc per worker: in use vs free but held", "timeseries", [
    {"expr": f'instance_worker:nginx_memory_glibc_in_use_bytes:max{{{I}}}', "legendFormat": "worker {{worker}} (pid {{pid}}) in use"},
    {"expr": f'instance_worker:nginx_memory_glibc_free_bytes:max{{{I}}}', "legendFormat": "worker {{worker}} (pid {{pid}}) free"},
], 12, 29, 12, 8, desc="Every worker's glibc as it published it.")
row("Trends and findings", 37)
panel("Trends: bytes per hour, fitted since the last reload", "timeseries", [
    {"expr": f'nginx_memory_trend_bytes_per_hour{{{I},series!~"container_.*"}}', "legendFormat": "pid {{pid}} {{series}}"},
], 0, 38, 12, 8, unit="bytes", desc="Bytes per hour (the unit reads as bytes: each point is a rate per hour), a line fitted over each process's history ring since the last reload (see the README's History and trends). The container's own trends are each worker's view of one group, left out.")
def table(p):
    p["options"] = {"showHeader": True}
    p["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}}}]
panel("Findings", "table", [
    {"expr": f'nginx_memory_finding{{{I}}} == 1', "format": "table", "instant": True},
], 12, 38, 12, 8, unit="none", extra=table)
row("The container", 46)
panel("The container's usage by part, against its limit", "timeseries", [
    {"expr": f'max by (part) (nginx_memory_container_part_bytes{{{I}}})', "legendFormat": "{{part}}"},
    {"expr": f'max(nginx_memory_container_limit_bytes{{{I}}})', "legendFormat": "cgroup limit"},
], 0, 47, 16, 9, stack=True, extra=limit_line,
    desc="The memory cgroup's charge split into parts that add up to its usage; the dashed line is its limit.")
panel("Working set, usage, TCP buffers", "timeseries", [
    {"expr": f'max(nginx_memory_container_working_set_bytes{{{I}}})', "legendFormat": "working set"},
    {"expr": f'max(nginx_memory_container_usage_bytes{{{I}}})', "legendFormat": "usage"},
    {"expr": f'max(nginx_memory_container_tcp_memory_bytes{{{I}}})', "legendFormat": "TCP buffers (the whole machine)"},
], 16, 47, 8, 9)

dash = {
    "title": "nginx memory (ngx-memory-status)",
    "uid": "ngx-memory-status",
    "description": "Where an nginx or OpenResty server's memory goes: the memory_status location's Prometheus answer.",
    "tags": ["nginx", "memory"],
    "timezone": "",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        # One instance at a time: every panel shows one nginx (its sums are
        # that server's, its limit line that container's).
        {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
         "query": {"query": "label_values(nginx_memory_info, instance)", "refId": "instance"},
         "definition": "label_values(nginx_memory_info, instance)",
         "multi": False, "includeAll": False, "current": {}, "refresh": 2, "sort": 1, "hide": 0},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
print(json.dumps(dash, indent=2, ensure_ascii=False))
