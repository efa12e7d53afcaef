/** DestinationRule: traffic policies merged by port and subset. */
import { isObject } from '../../config/schema.js';
import { num } from './common.js';
import type { DrSubset, DrTrafficPolicy, PolicyFields } from './specs.js';

// ---------------------------------------------------------------------------------------------
// DestinationRules

export interface MergedRule {
  name: string;
  trafficPolicy?: DrTrafficPolicy;
  subsets: Map<string, DrSubset>;
}

export function atPort(tp: DrTrafficPolicy | undefined, port: number): PolicyFields {
  if (!tp) return {};
  const p = tp.portLevelSettings?.find((s) => num(s.port?.number) === port);
  const src = p ?? tp;
  return { loadBalancer: src.loadBalancer, connectionPool: src.connectionPool, outlierDetection: src.outlierDetection, tls: src.tls };
}

export function normalizeOutlier(od: unknown): unknown {
  if (!isObject(od) || od.consecutiveErrors === undefined || od.consecutive5xxErrors !== undefined) return od;
  return { ...od, consecutive5xxErrors: od.consecutiveErrors };
}
