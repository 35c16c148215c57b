{{/* The release-scoped name of every object. */}}
{{- define "rootstock.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "rootstock.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of a component (installer or uninstaller). */}}
{{- define "rootstock.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "rootstock.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* .Values.prefix without a trailing slash; it must be absolute. */}}
{{- define "rootstock.prefix" -}}
{{- if not (hasPrefix "/" .Values.prefix) -}}
{{- fail (printf "prefix must be an absolute path, not %q" .Values.prefix) -}}
{{- end -}}
{{- trimSuffix "/" .Values.prefix -}}
{{- end -}}

{{- define "rootstock.checkValues" -}}
{{- if and .Values.kubelet.reconfigure (not .Values.service.start) -}}
{{- fail "kubelet.reconfigure=true needs service.start=true: kubelet would point at a runtime that is not running" -}}
{{- end -}}
{{- end -}}

{{/* The host directories the node script writes, each mounted at /host<path>. */}}
{{- define "rootstock.hostDirs" -}}
- {{ include "rootstock.prefix" . }}/bin
- {{ include "rootstock.prefix" . }}/lib/systemd/system
- /etc/rootstock
{{- if .Values.kubelet.reconfigure }}
- {{ dir .Values.kubelet.configFile }}
{{- end }}
{{- end -}}

{{/* The pod spec of the installer and of the uninstaller: `node.sh <action>`. */}}
{{- define "rootstock.podSpec" -}}
{{- $dirs := include "rootstock.hostDirs" .root | fromYamlArray -}}
# hostPID: systemctl runs in the host's namespaces (nsenter -t 1).
hostPID: true
priorityClassName: system-node-critical
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
nodeSelector: {{- toYaml .root.Values.nodeSelector | nindent 2 }}
tolerations: {{- toYaml .root.Values.tolerations | nindent 2 }}
containers:
  - name: {{ .component }}
    image: {{ include "rootstock.image" .root | quote }}
    imagePullPolicy: {{ .root.Values.image.pullPolicy }}
{{- if eq .action "install" }}
    command: ["/bin/sh", "/etc/rootstock-chart/node.sh", "install"]
{{- else }}
    # Inline: the release's ConfigMap is deleted while this hook's pods may still start.
    command: ["/bin/sh", "-c", {{ .root.Files.Get "files/node.sh" | quote }}, "node.sh", {{ .action | quote }}]
{{- end }}
    env:
      - { name: PREFIX, value: {{ include "rootstock.prefix" .root | quote }} }
      - { name: START_SERVICE, value: {{ .root.Values.service.start | quote }} }
      - { name: KUBELET_RECONFIGURE, value: {{ .root.Values.kubelet.reconfigure | quote }} }
      - { name: KUBELET_CONFIG, value: {{ .root.Values.kubelet.configFile | quote }} }
      - { name: KUBELET_ENDPOINT, value: {{ .root.Values.kubelet.endpoint | quote }} }
    securityContext:
      # nsenter into PID 1's namespaces needs all capabilities.
      privileged: true
    resources: {{- toYaml .root.Values.resources | nindent 6 }}
    volumeMounts:
{{- if eq .action "install" }}
      - { name: chart, mountPath: /etc/rootstock-chart, readOnly: true }
{{- end }}
{{- range $i, $d := $dirs }}
      - { name: host-{{ $i }}, mountPath: {{ printf "/host%s" $d | quote }} }
{{- end }}
volumes:
{{- if eq .action "install" }}
  - name: chart
    configMap: { name: {{ include "rootstock.fullname" .root | quote }} }
{{- end }}
{{- range $i, $d := $dirs }}
  - name: host-{{ $i }}
    hostPath: { path: {{ $d | quote }}, type: DirectoryOrCreate }
{{- end }}
{{- end -}}
