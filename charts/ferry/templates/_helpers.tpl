{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every object name. "<release>-<chart>", or just the
release name when it already contains the chart name. Truncated to leave room
for the "-controller" / "-agent" suffixes within 63 characters.
*/}}
{{- define "ferry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"<chart>-<version>" for the helm.sh/chart label.
*/}}
{{- define "ferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ include "ferry.chart" . }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferry
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels shared by all components; add "ferry.componentLabel" to tell
the controller and the agent apart.
*/}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Controller: full name, labels, selector labels.
*/}}
{{- define "ferry.controller.fullname" -}}
{{- printf "%s-controller" (include "ferry.fullname" .) }}
{{- end }}

{{- define "ferry.controller.labels" -}}
{{ include "ferry.labels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "ferry.controller.selectorLabels" -}}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
Agent: full name, labels, selector labels.
*/}}
{{- define "ferry.agent.fullname" -}}
{{- printf "%s-agent" (include "ferry.fullname" .) }}
{{- end }}

{{- define "ferry.agent.labels" -}}
{{ include "ferry.labels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "ferry.agent.selectorLabels" -}}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{/*
ServiceAccount names: the configured name, else "<fullname>-<component>" when
the chart creates it. An existing account must be named: the chart never
binds its roles to a namespace's "default" account.
*/}}
{{- define "ferry.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "ferry.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- required "controller.serviceAccount.name is required when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ferry.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "ferry.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: "<repository>:<tag>", the tag defaulting to appVersion.
Call with (dict "image" .Values.x.image "root" $).
*/}}
{{- define "ferry.image" -}}
{{- printf "%s:%s" .image.repository (toString (default .root.Chart.AppVersion .image.tag)) }}
{{- end }}

{{/*
prometheus.io/* annotations for a /metrics endpoint on the given port.
*/}}
{{- define "ferry.prometheusAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ . | quote }}
prometheus.io/path: /metrics
{{- end }}

{{/*
Name of the Secret holding the ferry CA (ca.crt and ca.key), mounted by the
controller only: the configured name, else "<fullname>-ca".
*/}}
{{- define "ferry.ca.secretName" -}}
{{- default (printf "%s-ca" (include "ferry.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/*
Name of the ConfigMap with the CA certificate alone, which the agents mount.
*/}}
{{- define "ferry.ca.bundleName" -}}
{{- printf "%s-ca" (include "ferry.fullname" .) }}
{{- end }}

{{/*
The signer name of the agents' CertificateSigningRequests: one per release
namespace, so two installations never sign each other's agents.
*/}}
{{- define "ferry.csrSignerName" -}}
{{- printf "ferry.dev/agent-%s" .Release.Namespace }}
{{- end }}

{{/*
Name of the Secret holding the key archives are encrypted with at rest
(agent.encryption): the existing one named in the values, else the generated
"<fullname>-encryption-key".
*/}}
{{- define "ferry.encryption.secretName" -}}
{{- default (printf "%s-encryption-key" (include "ferry.fullname" .)) .Values.agent.encryption.existingSecret }}
{{- end }}

{{/*
The entry of agent.hostPathMounts a path lies below (or equals), else "".
Call with (dict "path" <path> "mounts" <list>). Paths are compared
segment-wise: /var/lib/ferry-x does not lie below /var/lib/ferry.
*/}}
{{- define "ferry.agent.mountFor" -}}
{{- $path := .path }}
{{- $found := "" }}
{{- range .mounts }}
{{- if and (not $found) (or (eq . "/") (eq $path .) (hasPrefix (printf "%s/" .) $path)) }}
{{- $found = . }}
{{- end }}
{{- end }}
{{- $found }}
{{- end }}

{{/*
The agent's host directories as a JSON list of {name, path}: the volumes the
DaemonSet mounts at the same path. Without agent.hostPathMounts: dataDir,
kubeletCheckpointDir and (restore backend containerd) the containerd
socket's directory. With it: those mounts, plus the socket's directory when
none of them covers it. Fails, naming the value, when a path needs a mount it
cannot have: "$(VAR)" in a path that is not below a hostPathMounts entry (a
hostPath volume cannot expand it), or dataDir/kubeletCheckpointDir outside
every hostPathMounts entry.
*/}}
{{- define "ferry.agent.hostVolumes" -}}
{{- $a := .Values.agent }}
{{- $mounts := $a.hostPathMounts | default list }}
{{- $sockDir := "" }}
{{- if eq $a.restore.backend "containerd" }}
{{- $sockDir = dir $a.restore.containerdAddress }}
{{- end }}
{{- $volumes := list }}
{{- $paths := list (list "agent.dataDir" $a.dataDir) (list "agent.kubeletCheckpointDir" $a.kubeletCheckpointDir) }}
{{- $handler := eq $a.restore.backend "runtimeHandler" }}
{{- if $handler }}
{{- $paths = append $paths (list "agent.restore.grantsDir" $a.restore.grantsDir) }}
{{- $paths = append $paths (list "agent.restore.handlerDir" $a.restore.handlerDir) }}
{{- end }}
{{- if not $mounts }}
{{- range $paths }}
{{- if contains "$(" (index . 1) }}
{{- fail (printf "%s is %q: a hostPath volume cannot expand \"$(...)\", so set agent.hostPathMounts to host directories it lies below (e.g. [%s])" (index . 0) (index . 1) (index . 1 | splitList "$(" | first | trimSuffix "/" | default "/")) }}
{{- end }}
{{- end }}
{{- $volumes = append $volumes (dict "name" "data" "path" $a.dataDir) }}
{{- $volumes = append $volumes (dict "name" "kubelet-checkpoints" "path" $a.kubeletCheckpointDir) }}
{{- if $handler }}
{{- $volumes = append $volumes (dict "name" "restore-grants" "path" $a.restore.grantsDir) }}
{{- $volumes = append $volumes (dict "name" "runtime-handler" "path" $a.restore.handlerDir) }}
{{- end }}
{{- else }}
{{- range $paths }}
{{- if not (include "ferry.agent.mountFor" (dict "path" (index . 1) "mounts" $mounts)) }}
{{- fail (printf "%s is %q, which lies below none of agent.hostPathMounts %v: the agent would not see it" (index . 0) (index . 1) $mounts) }}
{{- end }}
{{- end }}
{{- range $i, $m := $mounts }}
{{- $volumes = append $volumes (dict "name" (printf "host-%d" $i) "path" $m) }}
{{- end }}
{{- end }}
{{- if and $sockDir (not (include "ferry.agent.mountFor" (dict "path" $sockDir "mounts" $mounts))) }}
{{- if contains "$(" $sockDir }}
{{- fail (printf "agent.restore.containerdAddress is %q: a hostPath volume cannot expand \"$(...)\" in its directory, so add a directory above it to agent.hostPathMounts" $a.restore.containerdAddress) }}
{{- end }}
{{- $volumes = append $volumes (dict "name" "containerd" "path" $sockDir "socket" true) }}
{{- end }}
{{- toJson $volumes }}
{{- end }}
