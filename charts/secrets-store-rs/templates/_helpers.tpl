{{/* Name of every namespaced object and of the cluster-scoped RBAC objects. */}}
{{- define "ssrs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels common to every object. */}}
{{- define "ssrs.labels" -}}
app.kubernetes.io/name: {{ include "ssrs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels the DaemonSet selects its pods by (immutable once installed). */}}
{{- define "ssrs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ssrs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The directory of the CSI socket; the same path inside the container and on the host, because
the agent registers it with kubelet itself and kubelet dials the path it is given. */}}
{{- define "ssrs.pluginDir" -}}
{{ .Values.linux.kubeletRootDir }}/plugins/csi-secrets-store
{{- end -}}

{{/* RUST_LOG from upstream's numeric logVerbosity. */}}
{{- define "ssrs.rustLog" -}}
{{- $v := int .Values.logVerbosity -}}
{{- if ge $v 5 -}}trace{{- else if ge $v 1 -}}debug{{- else -}}info{{- end -}}
{{- end -}}

{{/* Name of the controller's Deployment, ServiceAccount and RBAC objects. */}}
{{- define "ssrs.controllerName" -}}
{{- printf "%s-controller" (include "ssrs.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels the controller's Deployment selects its pods by: never the node agents'. */}}
{{- define "ssrs.controllerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ssrs.controllerName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of the controller's objects. */}}
{{- define "ssrs.controllerLabels" -}}
{{ include "ssrs.controllerSelectorLabels" . }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: {{ include "ssrs.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* "true" when the node agents roll workloads themselves (secret sync on, nodeRollout on, no
controller): only then do they get workload write access. */}}
{{- define "ssrs.nodeRolls" -}}
{{- if and .Values.syncSecret.enabled .Values.nodeRollout (not .Values.controller.enabled) -}}true{{- end -}}
{{- end -}}
