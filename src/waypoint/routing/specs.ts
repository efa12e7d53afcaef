/** The shapes of the routing APIs as ambit reads them (validated before: src/config/validate.ts). */


// ---------------------------------------------------------------------------------------------
// The config as validate.ts accepts it (integers may be strings of digits).

export type Int = number | string;
export interface StringMatch { exact?: string; prefix?: string; regex?: string }
export interface VsHeaderOps { set?: Record<string, string>; add?: Record<string, string>; remove?: string[] }
export interface VsHeaders { request?: VsHeaderOps; response?: VsHeaderOps }
export interface VsDestination { host: string; subset?: string; port?: { number?: Int } }
export interface VsMatch {
  uri?: StringMatch; scheme?: StringMatch; method?: StringMatch; authority?: StringMatch;
  headers?: Record<string, StringMatch>; withoutHeaders?: Record<string, StringMatch>; queryParams?: Record<string, StringMatch>;
  port?: Int; sourceLabels?: Record<string, string>; sourceNamespace?: string; gateways?: string[]; ignoreUriCase?: boolean;
}
export interface Percent { value?: number }
export interface VsRedirect { uri?: string; authority?: string; port?: Int; derivePort?: string; scheme?: string; redirectCode?: Int }
export interface VsHttpRoute {
  match?: VsMatch[];
  route?: { destination: VsDestination; weight?: Int; headers?: VsHeaders }[];
  redirect?: VsRedirect;
  directResponse?: { status: Int; body?: { string?: string; bytes?: string } };
  delegate?: unknown;
  rewrite?: { uri?: string; authority?: string; uriRegexRewrite?: { match: string; rewrite: string } };
  timeout?: string;
  retries?: { attempts?: Int; perTryTimeout?: string; retryOn?: string; backoff?: string; retryIgnorePreviousHosts?: boolean };
  fault?: {
    delay?: { fixedDelay?: string; exponentialDelay?: string; percentage?: Percent; percent?: Int };
    abort?: { httpStatus?: Int; grpcStatus?: string; http2Error?: string; percentage?: Percent };
  };
  mirror?: VsDestination;
  mirrors?: { destination: VsDestination; percentage?: Percent }[];
  mirrorPercentage?: Percent;
  mirrorPercent?: Int;
  corsPolicy?: unknown;
  headers?: VsHeaders;
}
export interface VsSpec { hosts?: string[]; gateways?: string[]; http?: VsHttpRoute[]; exportTo?: string[] }

export interface PolicyFields { loadBalancer?: unknown; connectionPool?: unknown; outlierDetection?: unknown; tls?: unknown }
export interface DrTrafficPolicy extends PolicyFields { portLevelSettings?: (PolicyFields & { port?: { number?: Int } })[]; retryBudget?: unknown }
export interface DrSubset { name: string; labels?: Record<string, string>; trafficPolicy?: DrTrafficPolicy }
export interface DrSpec { host: string; trafficPolicy?: DrTrafficPolicy; subsets?: DrSubset[]; exportTo?: string[]; workloadSelector?: unknown }

export interface ParentRef { group?: string; kind?: string; namespace?: string; name: string; sectionName?: string; port?: Int }
export interface BackendRef { group?: string; kind?: string; name: string; namespace?: string; port?: Int; weight?: Int; filters?: unknown }
export interface HeaderModifier { set?: { name: string; value: string }[]; add?: { name: string; value: string }[]; remove?: string[] }
export interface PathModifier { type?: string; replaceFullPath?: string; replacePrefixMatch?: string }
export interface GwFilter {
  type: string;
  requestHeaderModifier?: HeaderModifier;
  responseHeaderModifier?: HeaderModifier;
  requestMirror?: { backendRef: BackendRef; percent?: Int; fraction?: { numerator: Int; denominator?: Int } };
  requestRedirect?: { scheme?: string; hostname?: string; path?: PathModifier; port?: Int; statusCode?: Int };
  urlRewrite?: { hostname?: string; path?: PathModifier };
  cors?: unknown;
}
export interface NameValueMatch { type?: string; name: string; value: string }
export interface GwMatch {
  path?: { type?: string; value?: string };
  method?: string | { type?: string; service?: string; method?: string };
  headers?: NameValueMatch[];
  queryParams?: NameValueMatch[];
}
export interface GwRule {
  matches?: GwMatch[];
  filters?: GwFilter[];
  backendRefs?: BackendRef[];
  timeouts?: { request?: string; backendRequest?: string };
  retry?: { codes?: Int[]; attempts?: Int; backoff?: string };
}
export interface GwRouteSpec { parentRefs?: ParentRef[]; hostnames?: string[]; rules?: GwRule[] }
