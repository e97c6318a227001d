{{- define "atproto-verifier.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "atproto-verifier.rules" -}}
- {apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE", "UPDATE"], resources: ["pods", "pods/ephemeralcontainers", "replicationcontrollers"], scope: Namespaced}
- {apiGroups: ["apps"], apiVersions: ["v1"], operations: ["CREATE", "UPDATE"], resources: ["deployments", "replicasets", "statefulsets", "daemonsets"], scope: Namespaced}
- {apiGroups: ["batch"], apiVersions: ["v1"], operations: ["CREATE", "UPDATE"], resources: ["jobs", "cronjobs"], scope: Namespaced}
{{- end -}}

{{- define "atproto-verifier.client" -}}
{{- if .Values.tls.caBundle }}
caBundle: {{ .Values.tls.caBundle }}
{{- end }}
service: {name: {{ .Release.Name }}, namespace: {{ .Release.Namespace }}, path: {{ .path }}, port: 443}
{{- end -}}
