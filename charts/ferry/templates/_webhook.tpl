{{/*
Admission webhook: Service name, serving-certificate Secret name and the DNS
names the API server dials (<svc>.<ns>.svc) and verifies the certificate
against.
*/}}
{{- define "ferry.webhook.serviceName" -}}
{{- printf "%s-webhook" (include "ferry.fullname" .) }}
{{- end }}

{{- define "ferry.webhook.secretName" -}}
{{- default (printf "%s-webhook-tls" (include "ferry.fullname" .)) .Values.webhook.tls.secretName }}
{{- end }}

{{- define "ferry.webhook.dnsNames" -}}
{{- $svc := include "ferry.webhook.serviceName" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}
